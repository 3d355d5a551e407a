"""Benchmarks: protoshim against each framework's native code, side by side.

Run with ``nox -s bench`` or ``python -m benchmarks``; docs/benchmarks.md
describes the method.
"""
