"""Conformance tests of the HTTP server protocol (protoshim.protocols.http).

They run on whichever framework ``--framework`` selects, with both the
server and its raw clients on the loop under test.
"""
