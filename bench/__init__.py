"""Benchmarks: ``python -m bench NAME``. Each compares against a baseline in the same run."""
