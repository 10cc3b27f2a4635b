"""Rooms: WebSocket clients that receive every message sent to their room, on any worker."""
