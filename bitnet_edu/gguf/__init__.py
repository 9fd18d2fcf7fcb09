"""Old import path of :mod:`bitnet_edu.formats.gguf` (same objects): GGUF read and write."""

from ..formats.gguf import *  # noqa: F401,F403
from ..formats.gguf import __all__  # noqa: F401
from . import checkpoint, container, tokenizer  # noqa: F401  (the old submodule paths)
