"""Old import path of :mod:`bitnet_edu.formats.gguf.export`: ``to_gguf`` writes a bitnet.cpp
GGUF (I2_S) from a model or an HF directory.

    >>> from bitnet_edu.export import to_gguf
    >>> to_gguf("path/to/hf_model_dir", "model-i2_s.gguf")      # or a loaded model object
"""

from .formats.gguf.export import gguf_tensors, to_gguf  # noqa: F401

__all__ = ["to_gguf", "gguf_tensors"]
