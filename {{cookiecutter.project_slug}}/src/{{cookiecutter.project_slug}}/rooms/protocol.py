"""The worker's WebSocket protocol: Uvicorn's, configured for rooms and closing politely.

- Heartbeats: a ping every WS_HEARTBEAT_INTERVAL; a client that has answered nothing for
  WS_IDLE_TIMEOUT is closed (1011).
- Frames over WS_MAX_MESSAGE_SIZE are refused as they arrive (close 1009), never buffered.
- A text message that is not UTF-8 closes its connection with 1007 (invalid data) and one
  INFO line: a client's mistake, not the server's (Uvicorn would log an ERROR traceback).
- On shutdown (SIGTERM, a reload) every client gets 1001, going away, where Uvicorn sends
  1012: the service is not restarting on this connection, the client should reconnect.
- A client that reads nothing while messages wait for it is let go after WS_IDLE_TIMEOUT.
  The app already drops a slow client from its room (close 1013), but that close frame
  waits behind the unread messages, and a peer that never reads would otherwise hold its
  connection, and the memory behind it, for as long as TCP keeps trying.
"""

from asyncio import TimerHandle

from uvicorn.config import Config
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .settings import RoomSettings

GOING_AWAY = 1001
INVALID_DATA = 1007


def configure(config: Config, settings: RoomSettings) -> None:
    config.ws = RoomsWebSocketProtocol
    config.ws_ping_interval = settings.ws_heartbeat_interval
    # Uvicorn waits this long for a pong after each ping: silence, pongs included, lasts at
    # most interval + timeout before the client is closed.
    config.ws_ping_timeout = settings.ws_idle_timeout - settings.ws_heartbeat_interval
    config.ws_max_size = settings.ws_max_message_size
    # Compression is per connection: a message to a thousand clients would be compressed a
    # thousand times. Room messages are small; the CPU is better spent sending them.
    config.ws_per_message_deflate = False


class RoomsWebSocketProtocol(WebSocketsSansIOProtocol):
    stalled: TimerHandle | None = None

    def shutdown(self) -> None:
        if not self.handshake_complete or self.close_sent or self.transport.is_closing():
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY})
        self.conn.send_close(GOING_AWAY, "server shutting down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent and not _utf8(self.frames):
            self.frames = []
            self.logger.info(
                '%s - "WebSocket %s" sent a text message that is not UTF-8: closing with 1007',
                get_client_addr(self.scope),
                get_path_with_query_string(self.scope),
            )
            self.conn.send_close(INVALID_DATA, "text message is not UTF-8")
            self.handle_parser_exception()
            return
        super().send_receive_event_to_app()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.stalled is None and self.ping_interval and self.ping_timeout:
            self.stalled = self.loop.call_later(
                self.ping_interval + self.ping_timeout, self.transport.abort
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        super().connection_lost(exc)


def _utf8(frames: list[bytes]) -> bool:
    try:
        b"".join(frames).decode()
    except UnicodeDecodeError:
        return False
    return True
