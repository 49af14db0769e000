"""Operator tools: API client, demo, benchmark, invariant checks."""
