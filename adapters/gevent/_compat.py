"""The private names of gevent that the adapter uses: here, and nowhere else.

Verified on gevent 22.10.1 and 26.9.0 (the oldest and newest the nox matrix
runs).
"""

from __future__ import annotations

# The current thread's hub or None: gevent.get_hub() would create one to find none.
from gevent._hub_local import get_hub_if_exists  # type: ignore[import-untyped]

__all__ = ["get_hub_if_exists"]
