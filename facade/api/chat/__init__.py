"""POST /v1/chat/completions: request models (protocol.py) and the handler (handler.py)."""
