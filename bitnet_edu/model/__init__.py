"""Stage 4: the full BitNet b1.58 transformer on the ternary kernels.

``load_model`` (HF packed / bf16 master directory, ``.gguf`` file, hub id or the shipped default
model), ``random_model`` (full 2B4T shape, random ternary weights) and the model class itself.
"""

from .config import BitNetConfig  # noqa: F401
from .checkpoint import read_hf_checkpoint  # noqa: F401


def __getattr__(name):  # the model code pulls in numba: load it on first use
    if name in ("BitNetModel",):
        from .transformer import BitNetModel
        return BitNetModel
    if name in ("EmbeddingModel",):
        from .embedding import EmbeddingModel
        return EmbeddingModel
    if name == "load_model":
        from .loading import load_model
        return load_model
    if name == "random_model":
        from .random import random_model
        return random_model
    raise AttributeError(f"module 'bitnet_edu.model' has no attribute {name!r}")
