"""Benchmarks of kvs-toolkit against reference implementations: ``python -m benchmarks``."""
