"""Migrations of the analytics database (the request log)."""
