"""Old import path of the HF directory reader and the tensor schema (same objects).

The code lives in :mod:`bitnet_edu.formats.hf` (reading and writing HF directories) and
:mod:`bitnet_edu.formats.schema` (tensor names, shapes, the all-zero-linear warning).
"""

from ..formats.hf import iter_hf_checkpoint, read_hf_checkpoint  # noqa: F401
from ..formats.schema import (LINEARS, NORMS, check_zero_linear, expected_tensors,  # noqa: F401
                              is_linear)

__all__ = ["read_hf_checkpoint", "iter_hf_checkpoint", "expected_tensors", "LINEARS", "NORMS",
           "is_linear", "check_zero_linear"]
