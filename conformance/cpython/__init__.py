"""CPython's own asyncio test mixins, run on the loop under test."""
