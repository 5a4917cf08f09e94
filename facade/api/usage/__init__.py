"""GET /v1/usage: the query model (protocol.py) and the handler (handler.py)."""
