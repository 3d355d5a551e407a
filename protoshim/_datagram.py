"""The datagram transport, written once for every adapter.

A datagram protocol sees ``connection_made``, then any number of
``datagram_received`` and ``error_received``, then ``connection_lost``
exactly once.  ``sendto`` on a connected endpoint rejects a foreign address,
and flow control uses the same water marks as streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._flow import FlowControl
from ._primitives import Address, Datagram
from ._stream import WARN_AFTER_LOST_WRITES, _set_result_unless_cancelled, socket_extra

if TYPE_CHECKING:
    from ._loop import EventLoop

__all__ = ["DatagramTransport"]

logger = logging.getLogger("protoshim")


class DatagramTransport(FlowControl, asyncio.DatagramTransport):
    """Drive one datagram protocol over one adapter :class:`Datagram`."""

    def __init__(
        self,
        loop: EventLoop,
        endpoint: Datagram,
        protocol: asyncio.BaseProtocol,
        address: Address | None = None,
        waiter: asyncio.Future[None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        FlowControl.__init__(self)
        sock = endpoint.socket()
        asyncio.DatagramTransport.__init__(self, {**socket_extra(sock), **(extra or {})})
        self._loop = loop
        self._core_loop = loop
        self._endpoint = endpoint
        self._protocol: Any = protocol
        self._address = address
        self._closing = False
        self._lost_scheduled = False
        self._released = False
        self._lost_writes = 0
        endpoint.attach(self)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter)

    def _start_reading(self) -> None:
        if not self._closing:
            self._endpoint.start_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._protocol
        return protocol

    def get_write_buffer_size(self) -> int:
        return 0 if self._released else self._endpoint.queued()

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address | None = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._address is not None:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = None
        if self._closing:
            self._lost_writes += 1
            if self._lost_writes >= WARN_AFTER_LOST_WRITES:
                logger.warning("socket.sendto() raised exception.")
            return
        self._endpoint.sendto(bytes(data), addr)
        self._maybe_pause_protocol()

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        if self._lost_scheduled:
            return
        try:
            self._protocol.datagram_received(data, addr)
        except (SystemExit, KeyboardInterrupt) as exc:
            self._core_loop._exit_with(exc)
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.datagram_received() call failed.")

    def _on_error_received(self, exc: OSError) -> None:
        if self._lost_scheduled:
            return
        try:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt) as exit_exc:
            self._core_loop._exit_with(exit_exc)
        except BaseException as cb_exc:
            self._fatal_error(cb_exc, "Fatal error: protocol.error_received() call failed.")

    def _on_error(self, exc: BaseException) -> None:
        self._fatal_error(exc, "Fatal error on datagram transport")

    def _on_written(self) -> None:
        if self._released:
            return
        self._maybe_resume_protocol()
        if self._closing and not self._endpoint.queued():
            self._schedule_connection_lost(None)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._endpoint.stop_reading()
        if not self._endpoint.queued():
            self._schedule_connection_lost(None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost_scheduled:
            return
        self._closing = True
        self._release(abort=True)
        self._schedule_connection_lost(exc)

    def _schedule_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost_scheduled:
            return
        self._lost_scheduled = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._release(abort=False)

    def _release(self, *, abort: bool) -> None:
        if self._released:
            return
        self._released = True
        if abort:
            self._endpoint.abort()
        else:
            self._endpoint.close()
