"""Write flow control: the water marks and the pause/resume calls.

Every rule about ``pause_writing`` and ``resume_writing`` lives here:

* the limits default to 64 KiB high and high // 4 low;
* ``pause_writing`` is called synchronously, once, when the buffer size goes
  strictly above the high-water mark;
* ``resume_writing`` is called once, when it drops to or below the low one.

The buffer size is whatever the adapter reports as queued, so the framework's
own queue is always counted.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

__all__ = ["FlowControl"]

DEFAULT_HIGH_WATER = 64 * 1024
# A constant, not high // 4 per transport: that would be one int object each.
DEFAULT_LOW_WATER = DEFAULT_HIGH_WATER // 4


class FlowControl:
    """Mix water-mark flow control into a transport.

    A subclass must set ``_loop`` and ``_protocol``, implement
    :meth:`get_write_buffer_size`, call :meth:`_maybe_pause_protocol` after
    every increase of the buffer size and :meth:`_maybe_resume_protocol`
    after every decrease.
    """

    # The state lives in the transport's slots (asyncio's _FlowControlMixin
    # declares these names): a mixin without __slots__ would give every
    # transport a __dict__.  Hidden from mypy, which reads an empty __slots__
    # as "this class sets no attributes".
    if not TYPE_CHECKING:
        __slots__ = ()

    _loop: asyncio.AbstractEventLoop
    _protocol: Any
    _protocol_paused: bool
    _high_water: int
    _low_water: int

    def __init__(self) -> None:
        self._protocol_paused = False
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_LOW_WATER

    def get_write_buffer_size(self) -> int:
        raise NotImplementedError

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water = high
        self._low_water = low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high_water:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report("protocol.pause_writing() failed", exc)

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or self.get_write_buffer_size() > self._low_water:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report("protocol.resume_writing() failed", exc)

    def _report(self, message: str, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )
