"""Migrations of the core database (users, backends, permissions, scripts, catalog revision)."""
