"""Built-in adapters: one subpackage per framework, all of the same shape.

Each subpackage exports ``ADAPTER`` (an :class:`protoshim.Adapter`) from its
``__init__`` without importing the framework, and keeps the loop itself in a
private ``_loop`` module that is imported only when a loop is created.
"""
