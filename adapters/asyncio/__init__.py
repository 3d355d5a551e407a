"""The reference adapters: the stdlib asyncio loop, and uvloop.

These are the loops every other adapter is measured against.  They do not go
through protoshim's core: the conformance suite's expectations are *defined*
by what the stdlib loop does.
"""

from ...core import Adapter

__all__ = ["ASYNCIO", "UVLOOP"]

ASYNCIO = Adapter(
    name="asyncio",
    # The class, not asyncio.new_event_loop(): that follows the installed
    # policy, which may be uvloop's or one that asks protoshim for a loop.
    loop_factory="asyncio:SelectorEventLoop",
    requires="asyncio",
    distribution="python",
    description="the stdlib asyncio event loop (the reference)",
    reference=True,
)

_NO_SENDFILE = "loop.sendfile() and loop.sock_sendfile() raise NotImplementedError"
_SENDFILE_TESTS = (
    "test_sendfile_sends_after_buffered_data_and_before_later_writes",
    "test_sendfile_offset_and_count_select_the_bytes_and_move_the_position",
    "test_sendfile_pauses_reading_and_refuses_writes_until_done",
    "test_sendfile_raises_connection_error_when_the_peer_leaves",
    "test_sendfile_falls_back_for_a_file_without_descriptor",
    "test_sendfile_refuses_a_closing_transport",
    "test_sock_sendfile_sends_a_range_of_the_file",
    "test_sendfile_on_an_empty_file_sends_nothing",
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
        "test_fd_watchers::test_reader_and_writer_callbacks_run": (
            "remove_reader() and remove_writer() return None, not whether a watch was removed"
        ),
        "test_fd_watchers::test_remove_finds_a_socket_closed_after_registration[reader]": (
            "remove_reader() and remove_writer() return None, not whether a watch was removed"
        ),
        "test_fd_watchers::test_remove_finds_a_socket_closed_after_registration[writer]": (
            "remove_reader() and remove_writer() return None, not whether a watch was removed"
        ),
        "test_fd_watchers::test_remove_after_the_loop_closed_returns_false": (
            "remove_reader() and remove_writer() return None, not whether a watch was removed"
        ),
        "test_fd_watchers::test_a_closing_transports_socket_can_be_watched": (
            "a closing transport's socket still counts as in use"
        ),
        **{f"test_sendfile::{name}": _NO_SENDFILE for name in _SENDFILE_TESTS},
        "test_sock::test_sock_recvfrom_into_fills_the_buffer_up_to_nbytes": (
            "sock_recvfrom_into() raises NotImplementedError"
        ),
        "test_sock::test_a_writer_that_stops_the_loop_runs_once": (
            "a writer callback that stopped the loop runs again before run_forever returns"
        ),
        "test_flow_control::test_default_write_buffer_limits": (
            "the default low-water mark is 16 bytes, not 16 KiB"
        ),
        "test_transport::test_pause_reading_inside_connection_made_is_honoured": (
            "pause_reading() inside connection_made() is ignored"
        ),
        "test_transport::test_create_connection_returns_before_data_received": (
            "data already on the socket reaches data_received before the task "
            "awaiting create_connection() resumes"
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
