"""The search API (FastAPI) and its web page."""
