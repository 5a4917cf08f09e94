"""Anthropic's Messages API: the request and the chat request it runs as (protocol.py), the Message
(message.py), its stream's events (events.py), the handlers (handler.py)."""
