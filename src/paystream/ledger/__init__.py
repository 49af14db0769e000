"""The ledger service: accounts, double-entry transfers, balances."""
