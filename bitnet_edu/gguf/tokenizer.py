"""Old import path of :mod:`bitnet_edu.formats.gguf.tokenizer` (same objects)."""

from ..formats.gguf.tokenizer import *  # noqa: F401,F403
from ..formats.gguf.tokenizer import __all__  # noqa: F401
