"""Sampling: the per-request parameters and the batched sampler."""

from .params import SamplingParams
from .sampler import SampleOutput, Sampler, make_generator

__all__ = ["SampleOutput", "Sampler", "SamplingParams", "make_generator"]
