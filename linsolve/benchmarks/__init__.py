"""Benchmark implementations behind ``linsolve bench NAME`` and ``bench/NAME.py``.
"""
