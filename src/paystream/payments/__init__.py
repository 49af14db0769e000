"""The payments service: the lifecycle of every payment, from request to terminal status."""
