"""Verified labels: people confirm or correct what the model guessed (store, CSV, review queue)."""
