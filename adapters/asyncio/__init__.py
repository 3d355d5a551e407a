"""The reference adapters: the stdlib asyncio loop, and uvloop.

These are the loops every other adapter is measured against.  They do not go
through protoshim's core: the conformance suite's expectations are *defined*
by what the stdlib loop does.
"""

from ..._registry import Adapter

__all__ = ["ASYNCIO", "UVLOOP"]

ASYNCIO = Adapter(
    name="asyncio",
    loop_factory="asyncio:new_event_loop",
    requires="asyncio",
    distribution="python",
    description="the stdlib asyncio event loop (the reference)",
)

UVLOOP = Adapter(
    name="uvloop",
    loop_factory="uvloop:new_event_loop",
    requires="uvloop",
    distribution="uvloop",
    description="uvloop, the libuv-based asyncio loop",
    # uvloop is a reference for speed, not for semantics: these are its own
    # departures from the stdlib loop, each confirmed in uvloop's source.
    known_failures={
        "test_flow_control::test_default_write_buffer_limits": (
            "the default low-water mark is 16 bytes, not 16 KiB"
        ),
        "test_transport::test_pause_reading_inside_connection_made_is_honoured": (
            "pause_reading() inside connection_made() is ignored"
        ),
        "test_transport::test_fifth_write_after_close_logs_a_warning": (
            "writes to a closed stream transport are dropped silently"
        ),
        "test_transport::test_transport_is_asyncio_transport": (
            "TCP transports do not inherit from asyncio.Transport"
        ),
        "test_transport::test_unix_transport_is_asyncio_transport": (
            "Unix transports do not inherit from asyncio.Transport"
        ),
        "test_udp::test_datagram_transport_type": (
            "UDP transports do not inherit from asyncio.BaseTransport"
        ),
        "test_errors::test_out_of_descriptors_pauses_accepting_then_serves": (
            "out of descriptors, libuv's accept closes the pending connection "
            "and nothing reaches the exception handler"
        ),
        "test_errors::test_raising_data_received_closes_the_transport_and_the_loop_goes_on": (
            "a raising data_received() is reported as 'Fatal error on transport'"
        ),
        "test_errors::test_exit_from_data_received_leaves_run_until_complete[KeyboardInterrupt]": (
            "KeyboardInterrupt from data_received() goes to the exception handler"
        ),
        "test_errors::test_exit_from_data_received_leaves_run_until_complete[SystemExit]": (
            "SystemExit from data_received() goes to the exception handler"
        ),
        "test_errors::test_signal_handler_exception_leaves_run_until_complete": (
            "a signal.signal handler's exception goes to the exception handler"
        ),
    },
)
