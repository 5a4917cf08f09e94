"""OpenAI's Responses API: the request and its input items (protocol.py), the conversation it runs
as (conversation.py), the Response object (response_object.py), its stream's events (events.py) and
the HTTP handlers with the store (handlers.py)."""
