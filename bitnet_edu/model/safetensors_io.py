"""Old import path of :mod:`bitnet_edu.formats.safetensors` (same objects)."""

from ..formats.safetensors import *  # noqa: F401,F403
from ..formats.safetensors import __all__  # noqa: F401
