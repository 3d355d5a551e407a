"""Run ``twistd`` with protoshim's plugin available.

Usage: ``python -m protoshim.adapters.twisted -n protoshim --port 8081 MODULE:FACTORY``.

Twisted looks for plugins only in ``twisted/plugins`` directories on
``sys.path``; this puts the drop-in shipped inside this package on the
plugin path first, so the plugin works without any file outside protoshim.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run twistd with the ``protoshim`` plugin available."""
    import twisted.plugins
    from twisted.scripts.twistd import run

    twisted.plugins.__path__.append(os.path.join(os.path.dirname(__file__), "plugins"))
    sys.argv[0] = "twistd"
    run()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
