"""Prefect tasks: thin wrappers over cerebro_core stage functions adding retries, timeouts,
caching and artifacts. No stage logic lives here."""
