"""Chaos tests start their own stacks (with faults switched on) through the e2e helpers."""
