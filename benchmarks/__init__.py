"""Benchmarks: each prints a table with its conditions beside a bare-library baseline.

Run one with `python -m benchmarks.<name>` from the repository root.
"""
