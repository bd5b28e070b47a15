"""Tortoise models: `core` (users, backends, permissions, scripts) and `analytics` (request logs)."""
