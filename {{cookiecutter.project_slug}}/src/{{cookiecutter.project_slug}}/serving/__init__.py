"""Serving: how this service runs as processes (placeholder docstring, replaced below)."""
