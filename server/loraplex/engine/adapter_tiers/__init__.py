"""Adapters inside the engine: host->slot residency, merged copies, pins, and the service the
API calls."""
