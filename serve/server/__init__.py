"""`kernels serve`: the OpenAI-compatible HTTP server over the engine (see main.py)."""
