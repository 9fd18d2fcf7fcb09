"""Exercise checks, one module per stage.  Each check prints PASS, NOT IMPLEMENTED or FAIL.

Usage in a notebook::

    from bitnet_edu import checks
    checks.check_absmean_ternary(my_absmean_ternary)

A check grades copies of its inputs against answers it computed first, and stops student code
that runs longer than ``bitnet_edu.checks._core.TIMEOUT_S`` seconds (environment variable
``BITNET_EDU_CHECK_TIMEOUT``); see :mod:`bitnet_edu.checks._core`.
"""

from ._core import FAIL, NOT_IMPLEMENTED, PASS, CheckResult, check  # noqa: F401
from .stage1 import *  # noqa: F401,F403
from .stage2 import *  # noqa
from .stage3 import *  # noqa
from .stage5 import *  # noqa
from .stage6 import *  # noqa
from .stage4 import *  # noqa
from .stage7 import *  # noqa
from .stage8 import *  # noqa
from .stage9 import *  # noqa
