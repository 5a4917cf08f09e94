"""POST /v1/embeddings: the request model (protocol.py) and the handler (handler.py)."""
