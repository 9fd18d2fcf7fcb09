"""GGUF, the llama.cpp / bitnet.cpp file format: our own reader and writer.

The PyPI ``gguf`` package cannot read bitnet.cpp's I2_S tensors (ggml type 36), so this small
package parses the container itself (``container``), converts the embedded tokenizer
(``tokenizer``), maps a BitNet GGUF to the canonical HF-named checkpoint (``checkpoint``) and
writes one from a model or an HF directory (``export``: :func:`to_gguf`).
"""

from .checkpoint import (ARCHITECTURES, config_from_gguf, gguf_model_metadata, gguf_to_hf_name,
                         hf_to_gguf_name, iter_gguf_checkpoint, read_gguf_checkpoint)
from .container import (GGML_BF16, GGML_F16, GGML_F32, GGML_I2_S, GGUFError, GGUFReader, GGUFTensor,
                        GGUFWriter, TensorData, Value, write_gguf)
from .export import gguf_tensors, to_gguf
from .tokenizer import placeholder_vocab_gguf, tokenizer_from_gguf, tokenizer_to_gguf

__all__ = [
    "read_gguf_checkpoint", "iter_gguf_checkpoint", "GGUFReader", "GGUFTensor", "GGUFError",
    "GGUFWriter", "write_gguf", "TensorData", "Value", "GGML_F32", "GGML_F16", "GGML_BF16",
    "GGML_I2_S", "ARCHITECTURES", "config_from_gguf", "gguf_model_metadata", "gguf_to_hf_name",
    "hf_to_gguf_name", "tokenizer_from_gguf", "tokenizer_to_gguf", "placeholder_vocab_gguf",
    "to_gguf", "gguf_tensors",
]
