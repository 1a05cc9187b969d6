"""Serving benchmarks: ``kernels bench offline`` (:mod:`kernels.serve.bench.offline`)."""
