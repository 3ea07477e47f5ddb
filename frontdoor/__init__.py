"""The one front door of `python app.py`: HTTP/1.1 and the /stream WebSocket on one port.

It knows nothing of Telnyx or of calls. The application gives it an `accept` function for
websocket upgrades (returning a Handler, or raising HttpError to refuse), a WSGI app for every
other request, and a Timer (the media clock) to run on its loop.

- http: the one request parser (llhttp through httptools) and its limits, Sans-I/O
- wire: RFC 6455 handshake checks and framing, Sans-I/O
- websocket: one accepted websocket on the loop
- wsgi: complete requests run under the WSGI app on a bounded pool
- server: the loop that owns the port, the connections and the deadlines
"""

from frontdoor.http import HttpError, Request
from frontdoor.server import AcceptFn, FrontDoor, Timer
from frontdoor.websocket import Connection, Handler, Limits
from frontdoor.wire import CloseCode

__all__ = ["AcceptFn", "CloseCode", "Connection", "FrontDoor", "Handler", "HttpError", "Limits", "Request", "Timer"]
