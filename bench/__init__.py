"""Benchmarks of the lab's parts against reference implementations (``python -m bench``)."""
