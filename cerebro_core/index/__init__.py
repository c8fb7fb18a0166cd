"""Index: FAISS build + tuning, search, the published pyfunc search model, the index stage."""
