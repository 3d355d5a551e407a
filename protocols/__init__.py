"""Protocols written once against asyncio's interfaces: echo and HTTP."""
