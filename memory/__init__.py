"""Replay store, prototype index, persistence. Imports no other lifelong package."""
