"""The private names of gevent that the adapter relies on, and only here.

Verified on gevent 22.10.1 and 26.9.0, the oldest and newest releases the
nox matrix runs.  Everything else the adapter uses is public API.
"""

from __future__ import annotations

from typing import Any

from gevent._hub_local import get_hub_if_exists  # type: ignore[import-untyped]

__all__ = ["hub_if_exists"]


def hub_if_exists() -> Any:
    """Return the current thread's gevent hub, or None, without creating one.

    ``gevent.get_hub()`` would create a hub (and its loop) just to find none.
    """
    return get_hub_if_exists()
