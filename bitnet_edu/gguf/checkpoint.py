"""Old import path of :mod:`bitnet_edu.formats.gguf.checkpoint` (same objects)."""

from ..formats.gguf.checkpoint import *  # noqa: F401,F403
from ..formats.gguf.checkpoint import __all__  # noqa: F401
