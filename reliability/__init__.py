"""Reliability scripts: crash cycles, soak, long schemathesis runs (see README.md)."""
