"""POST /v1/images/generations and the image downloads: the request model (protocol.py) and the handlers (handler.py)."""
