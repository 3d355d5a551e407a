"""Reliability and security tests: faults, load and hostile input, on every framework.

They belong to the conformance suite but are marked ``slow`` and run only
when asked for (``pytest conformance/reliability --framework NAME``, or
``-m slow``); ``docs/reliability.md`` describes each test and its figures.
"""
