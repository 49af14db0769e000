"""Shared plumbing: config, money, ids, outbox/inbox, bus, database, runtime, observability.

Nothing in `platform` imports a service package.
"""
