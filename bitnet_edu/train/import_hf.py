"""Load an exported HF BitNet directory (e.g. the shipped ``bitnet_edu/default_model``) back into
a torch :class:`~bitnet_edu.train.model.BitNetLM`, for fine-tuning.

The shipped model has no float master on disk: each projection is packed ternary codes ``q`` and
one bf16 absmean scale ``s``.  A QAT :class:`~bitnet_edu.bitlinear.BitLinear` recomputes its
ternary weights from a *latent* float weight ``W`` at every forward
(``round(W / mean|W|)`` clipped to [-1, 1], times ``mean|W|``), so we need a ``W`` that gives back
exactly ``q`` and ``s``.  ``W = q * m`` with ``m = s * N / nnz(q)`` (N entries) does: its absmean
is ``m * nnz / N = s``, and ``W / s = q * N / nnz`` rounds and clips to ``q`` because
``N / nnz >= 1`` (the clip at +-1 makes any magnitude above 0.5 a 1).  The forward is then
the engine's arithmetic (int8 activations x ternary codes, one rescale), and the logits agree
with ``bitnet_edu.load_model()`` to float32 rounding (tests/test_lora.py measures it).

What this latent cannot restore is the *distance to the rounding boundary* that the real master
had: every nonzero weight sits at ``N/nnz`` (about 1.5) scales and every zero at exactly 0, so
continued QAT from it needs a larger step to flip a weight than it would from the master.  When
the training checkpoint is at hand (``runs/<config>/checkpoint.pt`` is not shipped), pass it as
``master=`` to start from the true latent weights instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..bitlinear import BitLinear
from ..config import BitNetConfig
from ..formats.hf import read_hf_checkpoint
from .model import BitNetLM

__all__ = ["load_bitnet_lm", "latent_from_ternary", "default_model_dir"]


def default_model_dir() -> Path:
    """``bitnet_edu/default_model`` (the shipped trained model)."""
    from .. import DEFAULT_MODEL

    return Path(DEFAULT_MODEL)


def latent_from_ternary(q: np.ndarray, scale: float) -> torch.Tensor:
    """A float32 ``[out, in]`` latent weight whose absmean ternarization is ``(q, scale)``.

    ``q`` int8 ``[out, in]`` in {-1, 0, 1}; ``scale`` the absmean scale.  Nonzero codes become
    ``+-scale * N / nnz``, zeros stay 0 (see the module docstring for why this is exact).
    """
    q = np.asarray(q)
    nnz = int(np.count_nonzero(q))
    m = float(scale) * q.size / max(nnz, 1)
    return torch.from_numpy(q.astype(np.float32) * np.float32(m))


def load_bitnet_lm(model_dir=None, *, master=None) -> BitNetLM:
    """A QAT :class:`BitNetLM` (BitLinear projections) holding ``model_dir``'s weights.

    Args:
        model_dir: an HF BitNet directory (packed offline or bf16 master; default the shipped
            model).
        master: optional training checkpoint (``checkpoint.pt`` from :mod:`.loop`) of the same
            model: its float32 latent weights are loaded instead of the reconstruction (its
            ternary codes must equal the directory's; the logits then differ from the engine's
            by the bf16 rounding of the exported scales and embedding).

    ``cfg.bos_token_id``/``eos_token_id`` come from the directory's ``config.json``.
    """
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    config, w = read_hf_checkpoint(model_dir)
    cfg = BitNetConfig.from_dict(config)
    torch.manual_seed(0)  # the init is overwritten; only keep construction deterministic
    lm = BitNetLM(cfg, quantized=True)
    sd = {}
    for name, a in w.items():
        if name.endswith("_scale"):
            continue
        key = name.removeprefix("model.")
        if name + "_scale" in w:
            sd[key] = latent_from_ternary(a, float(w[name + "_scale"][0]))
        else:
            sd[key] = torch.from_numpy(np.ascontiguousarray(a, np.float32))
    missing, unexpected = lm.load_state_dict(sd, strict=False)
    if unexpected or missing:
        raise ValueError(f"{model_dir}: tensors do not fit BitNetLM (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if master is not None:
        ck = torch.load(master, map_location="cpu", weights_only=True)
        state = ck.get("model", ck)
        lm.load_state_dict(state)
        for n, m in lm.bitlinears():
            q, _ = m.ternary()
            if not np.array_equal(q, w["model." + n + ".weight"]):
                raise ValueError(f"{master}: ternary codes of {n} differ from {model_dir}'s; "
                                 "not the master of this model")
    for m in lm.modules():
        if isinstance(m, BitLinear):
            m.eps = cfg.rms_norm_eps
    return lm
