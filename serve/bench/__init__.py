"""Serving benchmarks: ``kernels bench offline`` (the engine in-process, :mod:`.offline`) and
``kernels bench serve`` (a load generator against a running server, :mod:`.online`)."""
