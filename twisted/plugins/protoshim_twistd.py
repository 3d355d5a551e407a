"""Make ``twistd protoshim`` available: a Twisted plugin drop-in.

Twisted discovers plugins only as modules of ``twisted.plugins``, found in
any ``twisted/plugins`` folder on ``sys.path``; this file is installed there.
"""

from protoshim.adapters.twisted._twistd import serviceMaker

__all__ = ["serviceMaker"]
