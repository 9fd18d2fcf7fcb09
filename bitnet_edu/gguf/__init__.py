"""GGUF, the llama.cpp / bitnet.cpp file format: our own reader and writer.

The PyPI ``gguf`` package cannot read bitnet.cpp's I2_S tensors (ggml type 36), so this small
package parses the container itself (``container``), converts the embedded tokenizer
(``tokenizer``) and maps a BitNet GGUF to the canonical HF-named checkpoint (``checkpoint``).
Writing a GGUF from a model lives in :mod:`bitnet_edu.export`.
"""

from .checkpoint import (ARCHITECTURES, config_from_gguf, gguf_model_metadata, gguf_to_hf_name,
                         hf_to_gguf_name, iter_gguf_checkpoint, read_gguf_checkpoint)
from .container import (GGML_BF16, GGML_F16, GGML_F32, GGML_I2_S, GGUFError, GGUFReader, GGUFTensor,
                        TensorData, Value, write_gguf)
from .tokenizer import tokenizer_from_gguf, tokenizer_to_gguf

__all__ = [
    "read_gguf_checkpoint", "iter_gguf_checkpoint", "GGUFReader", "GGUFTensor", "GGUFError", "write_gguf", "TensorData",
    "Value", "GGML_F32", "GGML_F16", "GGML_BF16", "GGML_I2_S", "ARCHITECTURES", "config_from_gguf",
    "gguf_model_metadata", "gguf_to_hf_name", "hf_to_gguf_name", "tokenizer_from_gguf",
    "tokenizer_to_gguf",
]
