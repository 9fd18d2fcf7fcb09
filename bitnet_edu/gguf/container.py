"""Old import path of :mod:`bitnet_edu.formats.gguf.container` (same objects)."""

from ..formats.gguf.container import *  # noqa: F401,F403
from ..formats.gguf.container import __all__  # noqa: F401
