"""Model files, read and written in plain NumPy: one place for every on-disk format.

* :mod:`.schema` — the canonical tensor schema (names, shapes, order) every reader yields and
  every writer takes, and the all-zero-linear warning;
* :mod:`.safetensors` — safetensors read/write (bf16 as uint16 bit patterns);
* :mod:`.hf` — HF checkpoint directories: read (packed or bf16 master), write (packed);
* :mod:`.gguf` — bitnet.cpp's GGUF: container, tokenizer, checkpoint mapping, :func:`to_gguf`.

Readers stream ``(name, array)`` one tensor at a time; :mod:`bitnet_edu.model` builds the engine
from such a stream.  This package depends only on the config type, quantization and packing.
The facts behind the formats are in ``docs/formats.md``.
"""

from .gguf import iter_gguf_checkpoint, read_gguf_checkpoint, to_gguf
from .hf import iter_hf_checkpoint, read_hf_checkpoint, write_hf_checkpoint
from .safetensors import read_safetensors, write_safetensors
from .schema import LINEARS, NORMS, RowBlocks, check_zero_linear, expected_tensors, is_linear

__all__ = ["LINEARS", "NORMS", "RowBlocks", "expected_tensors", "is_linear", "check_zero_linear",
           "read_safetensors", "write_safetensors", "iter_hf_checkpoint", "read_hf_checkpoint",
           "write_hf_checkpoint", "iter_gguf_checkpoint", "read_gguf_checkpoint", "to_gguf"]
