"""The primitive interface: everything an adapter must supply, and nothing more.

Core owns every rule that a protocol can observe (call order, half-close,
flow control, close versus abort, error reporting).  An adapter maps a small
set of primitives onto its framework:

* a :class:`Driver` runs the framework's loop, schedules one callback soon,
  one callback later, wakes up from other threads, and watches descriptors;
* a :class:`Stream` moves the bytes of one connected stream socket;
* a :class:`Datagram` moves the packets of one datagram socket;
* a :class:`Listener` accepts connections on one listening socket.

Sockets are always created, bound and connected by core (so every option of
``create_server`` and ``create_connection`` behaves the same everywhere) and
handed to the adapter, which takes ownership of them: a primitive that
cannot wrap the socket it was given closes it before raising.

A driver that only implements the descriptor primitives can inherit working
streams, datagrams and listeners from :class:`protoshim.FdDriver`; adapters
whose framework has its own stream machinery override ``open_stream``,
``listen`` and ``open_datagram``.

Events flow back to core through the ``_on_*`` methods of the sinks below.
An adapter must:

* never call a sink from inside a primitive call (``write``, ``start_reading``,
  ...) -- only from the framework's own callbacks;
* stop calling a sink once ``close`` or ``abort`` has been called on it.

Exceptions follow one rule, whatever the framework would do with them (log
and drop them, print them, or stop): whatever escapes a callback that the
driver runs for its framework is passed to the loop's
:meth:`~protoshim.EventLoop.callback_failed`.  An ``Exception`` then reaches
the loop's exception handler and the loop goes on, as in asyncio;
KeyboardInterrupt and SystemExit leave ``run_forever``.  What the framework
raises while it polls (a ``signal.signal`` handler's exception) is not a
callback's: it leaves ``run_forever`` too, as it leaves the stdlib loop's
``select()``.

What core gives adapters in return is public, in :mod:`protoshim.core`, and
an adapter uses nothing else of protoshim (no underscore name of core):

* ``EventLoop.callback_failed(exc)``: the one rule above;
* ``EventLoop.serve_stream(stream, protocol_factory, ssl=...)``: the one
  accept path, for frameworks that accept connections themselves;
* ``EventLoop.begin_guest()`` / ``end_guest()`` and ``call_as_running()``:
  running inside a framework loop that the application runs;
* ``EventLoop.wakes_on_signals``: whether core already polls the signal
  wakeup descriptor;
* ``FdDriver`` and its streams, datagrams and listeners, with the one
  accept-pause policy (``accept_pauses``, ``ACCEPT_RETRY_DELAY``);
* ``WatchTable``: the reader and writer of each descriptor, applied to a
  framework that watches a descriptor once for both;
* ``relay`` / ``on_settled``: a future's outcome carried to another loop or
  to the framework's own waiting.

Descriptor ownership is core's too: ``add_reader`` and ``add_writer`` refuse
a descriptor that an open transport owns, before any driver sees it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._loop import EventLoop

__all__ = [
    "Cancellable",
    "Datagram",
    "DatagramSink",
    "Driver",
    "Listener",
    "Stream",
    "StreamSink",
]

Address = Any


class Cancellable(Protocol):
    """A scheduled framework call that can be cancelled."""

    def cancel(self) -> None:
        """Prevent the call if it has not run yet; ignore a second cancel."""


class StreamSink(Protocol):
    """Receive the events of one :class:`Stream` (implemented by core).

    The sink a stream is attached to is the stream's transport: core's
    ``StreamTransport``, an :class:`asyncio.Transport`.
    """

    def _on_data(self, data: bytes) -> None:
        """Deliver bytes read from the peer; only while reading is started."""

    def _on_eof(self) -> None:
        """Report that the peer shut its write side (a 0-byte read)."""

    def _on_error(self, exc: BaseException) -> None:
        """Report a fatal I/O error; the stream must then be aborted by core."""

    def _on_written(self) -> None:
        """Report that :meth:`Stream.queued` went down.

        Must be called at least when the queue becomes empty, and should be
        called whenever it shrinks, so the low-water mark is honoured.
        """


class Stream(Protocol):
    """Move the bytes of one connected stream socket.

    Two methods are optional, and looked up with ``getattr``:

    ``peername() -> Any``
        Return the peer's address, as :func:`~protoshim.core.peer_address`
        gave it (None if the socket had no peer), for a stream that keeps it
        anyway: core asks once, when the transport is made, and shares the
        object instead of asking the socket for a copy.

    ``direct_socket() -> socket.socket | None``
        Return the socket that :meth:`write` feeds unchanged, or None.  While
        :meth:`queued` is 0 and reading is stopped, core may then send to it
        itself (``loop.sendfile`` uses ``os.sendfile``), so ``queued()`` must
        count every byte not yet handed to that socket.  Return None when
        the bytes are transformed (TLS) or buffered out of ``queued()``'s
        sight.  Without the method, core uses :meth:`socket`.
    """

    def attach(self, sink: StreamSink) -> None:
        """Bind the sink; called once by core, before any other primitive."""

    def start_reading(self) -> None:
        """Start delivering data and EOF to the sink (idempotent)."""

    def stop_reading(self) -> None:
        """Stop delivering data to the sink and stop reading the socket.

        No data may reach the sink after this returns, and the framework must
        not keep reading into an unbounded buffer of its own.
        """

    def write(self, data: bytes) -> int:
        """Queue ``data`` (non-empty, immutable) for sending; never block.

        Return :meth:`queued` as it is after the call: 0 when every byte went
        straight to the socket, which spares the transport its water-mark
        bookkeeping in the common case.

        A send that fails should be reported to the sink's ``_on_error``
        before this returns, as the stdlib transport does: a writer that
        loops on ``write()`` and an unpaused ``drain()`` never yields to a
        later report.  Bytes kept for a later report must at least count in
        :meth:`queued`, so the high-water mark pauses such a writer.
        """

    def queued(self) -> int:
        """Return the number of bytes accepted by :meth:`write` and not yet sent."""

    def shutdown_write(self) -> None:
        """Shut the write side; core calls it once, only when ``queued() == 0``."""

    def close(self) -> None:
        """Release the connection; core calls it once, after flushing."""

    def abort(self) -> None:
        """Drop any queued bytes and release the connection immediately."""

    def socket(self) -> socket.socket | None:
        """Return the socket object behind the stream, if there is one."""


class DatagramSink(Protocol):
    """Receive the events of one :class:`Datagram` (implemented by core)."""

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        """Deliver one received datagram."""

    def _on_error_received(self, exc: OSError) -> None:
        """Report a non-fatal error, such as ICMP port unreachable."""

    def _on_error(self, exc: BaseException) -> None:
        """Report a fatal error; the endpoint is then aborted by core."""

    def _on_written(self) -> None:
        """Report that :meth:`Datagram.queued` went down."""


class Datagram(Protocol):
    """Move the packets of one datagram socket."""

    def attach(self, sink: DatagramSink) -> None:
        """Bind the sink; called once by core, before any other primitive."""

    def start_reading(self) -> None:
        """Start delivering datagrams to the sink (idempotent)."""

    def stop_reading(self) -> None:
        """Stop delivering datagrams to the sink."""

    def sendto(self, data: bytes, addr: Address | None) -> None:
        """Queue one datagram; ``addr`` is None on a connected socket."""

    def queued(self) -> int:
        """Return the number of bytes queued and not yet sent."""

    def close(self) -> None:
        """Release the socket; core calls it once, after flushing."""

    def abort(self) -> None:
        """Drop any queued datagrams and release the socket."""

    def socket(self) -> socket.socket | None:
        """Return the socket object behind the endpoint, if there is one."""


class Listener(Protocol):
    """Accept connections on one listening socket."""

    def close(self) -> None:
        """Stop accepting; the listening socket itself is closed by core.

        A failed ``accept()`` follows asyncio's rule: ``ACCEPT_NOTHING``
        errors end the batch quietly; any other is raised out of the
        listener's callback, to the exception handler (see
        :meth:`Driver.bind`), after pausing accepting for
        ``ACCEPT_RETRY_DELAY`` when :func:`~protoshim._fdio.accept_pauses`.
        """


#: Called by a listener with each accepted connection.
OnStream = Callable[[Stream], object]


class Driver(Protocol):
    """Run one framework loop on behalf of a :class:`protoshim.EventLoop`."""

    def bind(self, loop: EventLoop) -> None:
        """Learn the loop this driver runs; core calls it once, creating the loop.

        Every callback the driver runs for its framework (core's ticks,
        timers and watchers, and the adapter's own stream and listener
        events) must pass whatever escapes it to
        ``loop.callback_failed(exc)``, never to the framework.
        """

    def run(self) -> None:
        """Run the framework's loop until :meth:`stop` is called."""

    def stop(self) -> None:
        """Make :meth:`run` return; called from a callback on the loop.

        No descriptor callback may run after this call and before
        :meth:`run` returns, even if the framework polls once more: asyncio
        runs none after the iteration that stopped it.
        """

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the framework's next iteration, after I/O polling.

        Core never has more than one such call outstanding.
        """

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Call ``callback`` once, ``delay`` seconds from now, on a framework timer."""

    def wakeup_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread, make the loop thread call ``callback`` soon.

        The callback must run even while :meth:`run` is blocked polling I/O.
        It never raises: a thread may call it while the loop thread closes
        the driver (the stdlib loop's ``_write_to_self`` has the same race),
        and then the wakeup is dropped.
        """

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``fd`` is readable, replacing any previous one."""

    def remove_reader(self, fd: int) -> bool:
        """Stop watching ``fd`` for reading; return whether it was watched."""

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``fd`` is writable, replacing any previous one."""

    def remove_writer(self, fd: int) -> bool:
        """Stop watching ``fd`` for writing; return whether it was watched."""

    def open_stream(self, sock: socket.socket) -> Stream:
        """Wrap a connected, non-blocking stream socket, taking ownership of it."""

    def listen(self, sock: socket.socket, backlog: int, on_stream: OnStream) -> Listener:
        """Accept on a bound socket and call ``on_stream`` with each connection.

        The socket stays owned by core, which closes it after the listener.
        """

    def open_datagram(self, sock: socket.socket) -> Datagram:
        """Wrap a non-blocking datagram socket, taking ownership of it."""

    def close(self) -> None:
        """Release the framework's resources; the driver is not used again."""
