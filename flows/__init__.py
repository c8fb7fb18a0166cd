"""Prefect flows: wiring only (load config → call tasks)."""
