"""Tortoise migrations for the two apps (`core`, `analytics`), applied at start-up by `router.db`."""
