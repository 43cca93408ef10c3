"""Measured benchmarks; each prints (and optionally writes) JSON. Never timed unit tests."""
