"""Who may call what: Bearer verification (static keys, JWTs), scopes, model allow-lists, rate limits."""
