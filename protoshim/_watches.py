"""The per-descriptor reader and writer table that drivers share.

Most frameworks watch a descriptor once for both directions (a selector
key, a Tornado handler, a libuv poll handle), while asyncio adds and removes
a reader and a writer separately.  :class:`WatchTable` keeps the two
callbacks of each descriptor and asks the driver, through one ``apply``
function, to make the framework watch exactly the events still wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["READ", "WRITE", "Watch", "WatchTable", "WatchingDriver"]

Callback = Callable[[], None]

READ = 1
WRITE = 2


class Watch:
    """The reader and writer of one descriptor, and the framework's handle on it.

    A subclass instance given as its own descriptor's reader or writer
    callback becomes that descriptor's watch (see :meth:`WatchTable.add_reader`).
    """

    __slots__ = ("events", "fd", "handle", "reader", "writer")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reader: Callback | None = None
        self.writer: Callback | None = None
        #: the events the framework watches now (``READ | WRITE``)
        self.events = 0
        #: whatever the driver keeps for the framework's watch
        self.handle: Any = None

    def wanted(self) -> int:
        return (READ if self.reader is not None else 0) | (WRITE if self.writer is not None else 0)

    def __repr__(self) -> str:
        return f"<Watch fd={self.fd} events={self.events}>"


#: Make the framework watch exactly ``watch.events`` (0: stop and release
#: ``watch.handle``); the second argument is the events it watched before.
Apply = Callable[[Watch, int], None]


class WatchTable:
    """Readers and writers by descriptor, applied to a framework by one function.

    If ``apply`` raises (the framework refuses the descriptor), the table
    forgets the change and re-raises, so a refused watch leaves no trace.
    """

    __slots__ = ("_apply", "_watches")

    def __init__(self, apply: Apply) -> None:
        self._apply = apply
        # Indexed by descriptor: descriptors are small and dense, and a list
        # costs a watched descriptor 8 bytes where a dict entry costs about 50.
        self._watches: list[Watch | None] = []

    def get(self, fd: int) -> Watch | None:
        watches = self._watches
        return watches[fd] if 0 <= fd < len(watches) else None

    def watches(self) -> list[Watch]:
        return [watch for watch in self._watches if watch is not None]

    def _set(self, fd: int, reader: bool, callback: Callback | None) -> bool:
        watches = self._watches
        watch = watches[fd] if 0 <= fd < len(watches) else None
        if watch is None:
            if callback is None:
                return False
            # A callback that is this descriptor's own Watch (a descriptor
            # stream) is kept as the watch: one object less per connection.
            watch = callback if isinstance(callback, Watch) and callback.fd == fd else Watch(fd)
            if fd >= len(watches):
                watches.extend([None] * (fd + 1 - len(watches)))
            if fd >= 0:
                watches[fd] = watch
        old = watch.reader if reader else watch.writer
        if reader:
            watch.reader = callback
        else:
            watch.writer = callback
        previous = watch.events
        wanted = watch.wanted()
        if wanted != previous:
            watch.events = wanted
            try:
                self._apply(watch, previous)
            except BaseException:
                if reader:
                    watch.reader = old
                else:
                    watch.writer = old
                watch.events = previous
                if not previous and fd >= 0:
                    watches[fd] = None
                raise
        if not wanted and fd >= 0:
            watches[fd] = None
        return old is not None

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` when ``fd`` is readable, instead of any earlier reader.

        If ``fd`` has no watch yet and ``callback`` is a callable
        :class:`Watch` of ``fd``, it is used as the watch; likewise in
        :meth:`add_writer`.
        """
        self._set(fd, True, callback)

    def remove_reader(self, fd: int) -> bool:
        return self._set(fd, True, None)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._set(fd, False, callback)

    def remove_writer(self, fd: int) -> bool:
        return self._set(fd, False, None)

    @staticmethod
    def dispatch(watch: Watch, events: int) -> None:
        """Call the reader for ``READ``, then the writer for ``WRITE`` if still watched."""
        if events & READ and watch.reader is not None:
            watch.reader()
        if events & WRITE and watch.writer is not None:
            watch.writer()

    def clear(self) -> None:
        """Forget every watch without applying anything: the framework is going away."""
        self._watches = []


class WatchingDriver:
    """A driver whose four descriptor primitives are a :class:`WatchTable`'s own.

    Call :meth:`watch_with` in ``__init__``: the primitives are then the
    table's bound methods, with no call in between.
    """

    _watches: WatchTable
    add_reader: Callable[[int, Callback], None]
    remove_reader: Callable[[int], bool]
    add_writer: Callable[[int, Callback], None]
    remove_writer: Callable[[int], bool]

    def watch_with(self, apply: Apply) -> WatchTable:
        self._watches = table = WatchTable(apply)
        self.add_reader = table.add_reader
        self.remove_reader = table.remove_reader
        self.add_writer = table.add_writer
        self.remove_writer = table.remove_writer
        return table
