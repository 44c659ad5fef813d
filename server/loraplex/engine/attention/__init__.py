"""Paged attention: the contract, the registered hook, the backends."""
