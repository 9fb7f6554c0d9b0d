"""Durable storage: log stores, hard state and snapshots."""
