"""Hardening fuzz harness: seeded bad configs, overrides, data files and HTTP requests (docs/reliability.md)."""
