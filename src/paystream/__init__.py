"""paystream: an open-source payments core on a double-entry ledger."""

__version__ = "0.1.0"
