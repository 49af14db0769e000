"""The notifications service: webhook endpoints and signed, retried deliveries."""
