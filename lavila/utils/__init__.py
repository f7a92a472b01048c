"""Shared runtime utilities: distributed set-up, safe checkpoint I/O, logging."""
