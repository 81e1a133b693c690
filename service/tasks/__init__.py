"""Leased tasks: what jobs and evaluations share (the lease, the events, idempotent create)."""
