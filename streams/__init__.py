"""Live calls: the session registry, the REST API (api.py) and the /stream media WebSocket (socket.py)."""
