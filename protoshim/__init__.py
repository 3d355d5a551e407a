"""Write a PEP 3156 protocol once and run it on every framework.

The protocol and transport interfaces are asyncio's own classes, re-exported
here unchanged.  :func:`new_event_loop` returns an asyncio event loop whose
I/O and timers run on the named framework.
"""

from asyncio import BaseProtocol as BaseProtocol
from asyncio import BaseTransport as BaseTransport
from asyncio import BufferedProtocol as BufferedProtocol
from asyncio import DatagramProtocol as DatagramProtocol
from asyncio import DatagramTransport as DatagramTransport
from asyncio import Protocol as Protocol
from asyncio import ReadTransport as ReadTransport
from asyncio import Transport as Transport
from asyncio import WriteTransport as WriteTransport

from ._registry import CAPABILITIES as CAPABILITIES
from ._registry import Adapter as Adapter
from ._registry import UnknownFramework as UnknownFramework
from ._registry import frameworks as frameworks
from ._registry import get_adapter as get_adapter
from ._registry import new_event_loop as new_event_loop
from ._run import EventLoopPolicy as EventLoopPolicy
from ._run import loop_factory as loop_factory
from ._run import run as run

__all__ = [
    "CAPABILITIES",
    "Adapter",
    "BaseProtocol",
    "BaseTransport",
    "BufferedProtocol",
    "DatagramProtocol",
    "DatagramTransport",
    "EventLoopPolicy",
    "Protocol",
    "ReadTransport",
    "Transport",
    "UnknownFramework",
    "WriteTransport",
    "frameworks",
    "get_adapter",
    "loop_factory",
    "new_event_loop",
    "run",
]
