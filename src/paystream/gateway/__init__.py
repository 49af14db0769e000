"""The gateway: the only public HTTP surface (OAuth2 tokens, JWT, scopes, idempotency, routing)."""
