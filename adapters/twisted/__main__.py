"""Run ``twistd`` with protoshim's plugin available.

Usage: ``python -m protoshim.adapters.twisted -n protoshim --port 8081 MODULE:FACTORY``.

Twisted looks for plugins only in ``twisted/plugins`` directories on
``sys.path``.  An installed wheel puts protoshim's drop-in in the one next
to Twisted, so plain ``twistd protoshim`` works; an editable install does
not, so this adds the checkout's ``twisted/plugins`` to the plugin path.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run twistd with the ``protoshim`` plugin available."""
    from twisted.scripts.twistd import run

    import twisted.plugins

    # <root>/protoshim/adapters/twisted/__main__.py -> <root>/twisted/plugins
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    plugins = os.path.join(root, "twisted", "plugins")
    if plugins not in twisted.plugins.__path__:
        twisted.plugins.__path__.append(plugins)
    sys.argv[0] = "twistd"
    run()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
