"""Make ``twistd protoshim`` available: this module is a Twisted plugin drop-in.

Twisted imports it as ``twisted.plugins.protoshim_twistd`` from any
``twisted/plugins`` directory on ``sys.path``.
"""

from protoshim.adapters.twisted._twistd import serviceMaker

__all__ = ["serviceMaker"]
