"""Benchmarks of chatty against the libraries it drives; `python -m benchmarks.run` writes docs/benchmarks.md."""
