"""`paystream up`: embedded PostgreSQL, NATS JetStream and Redis, plus a process supervisor."""
