"""Scheduling: who runs this step (host-side bookkeeping, no torch)."""
