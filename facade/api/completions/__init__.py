"""POST /v1/completions: the request model (protocol.py) and the handler (handler.py)."""
