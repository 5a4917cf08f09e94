"""Keys the hub issues: the keys API (handler.py), IONOS's Auth API (ionos.py), their request models
(protocol.py) and their rules (manage.py)."""
