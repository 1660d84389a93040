"""Helpers of ``benchmarks/reproduce_study.py``, built on nodulebench's public API."""
