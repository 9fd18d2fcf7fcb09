"""Export a model to a bitnet.cpp GGUF file (I2_S), so what you train here runs in bitnet.cpp.

The file follows ``microsoft/BitNet-b1.58-2B-4T-gguf``: architecture ``bitnet-b1.58``,
``token_embd`` in f16 (also the output head), norms in f32, the seven linears of each block
in I2_S (2-bit codes in blocks of 128 + a float32 scale), and the gpt2 byte-level BPE
tokenizer embedded as ``tokenizer.ggml.*``.

    >>> from bitnet_edu.export import to_gguf
    >>> to_gguf("path/to/hf_model_dir", "model-i2_s.gguf")      # or a loaded model object
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .gguf import TensorData, gguf_model_metadata, hf_to_gguf_name, tokenizer_to_gguf, write_gguf
from .packing import I2S_BLOCK, check_ternary

__all__ = ["to_gguf", "gguf_tensors"]


def _load_source(model_or_dir):
    """``(config, weights, tokenizer, chat_template, name)`` from a directory or a model object."""
    if isinstance(model_or_dir, (str, Path)):
        from tokenizers import Tokenizer

        from .model.checkpoint import read_hf_checkpoint

        d = Path(model_or_dir)
        if not (d / "tokenizer.json").exists():
            raise ValueError(f"{d}: no tokenizer.json; GGUF export embeds the tokenizer")
        config, weights = read_hf_checkpoint(d)
        tok_cfg = d / "tokenizer_config.json"
        template = json.loads(tok_cfg.read_text()).get("chat_template") if tok_cfg.exists() else None
        return config, weights, Tokenizer.from_file(str(d / "tokenizer.json")), template, d.name
    if not hasattr(model_or_dir, "to_checkpoint") or getattr(model_or_dir, "tokenizer", None) is None:
        raise ValueError("to_gguf needs an HF model directory or a model with .to_checkpoint() "
                         f"and .tokenizer; got {type(model_or_dir).__name__}")
    config, weights = model_or_dir.to_checkpoint()
    template = getattr(model_or_dir, "chat_template", None)
    return config, weights, model_or_dir.tokenizer, template, "bitnet_edu"


def _i2s(name: str, q: np.ndarray, scale: np.ndarray) -> TensorData:
    """One linear as I2_S, after checking it is ternary, K % 128 == 0 and the scale is sane."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"tensor {name!r}: expected int8 ternary weights, got {q.dtype}; "
                         "quantize float weights first (bitnet_edu.quant.absmean_ternary)")
    if q.shape[-1] % I2S_BLOCK:
        raise ValueError(f"tensor {name!r} of shape {q.shape} [out, in]: I2_S needs in_features "
                         f"to be a multiple of {I2S_BLOCK} (each row is whole 128-value blocks)")
    s = np.asarray(scale, np.float32).reshape(-1)
    if s.size != 1 or not np.isfinite(s[0]) or s[0] <= 0:
        raise ValueError(f"tensor {name!r}_scale: expected one positive finite float, got {s[:4]}")
    return TensorData.i2s(check_ternary(q, name), float(s[0]))


def _f16(name: str, w: np.ndarray) -> np.ndarray:
    h = np.asarray(w, np.float32).astype(np.float16)
    if not np.isfinite(h).all():
        raise ValueError(f"tensor {name!r}: values beyond the float16 range (max 65504) or not finite")
    return h


def gguf_tensors(config: dict, weights: dict) -> dict:
    """Canonical weights -> ``{gguf_name: TensorData}`` in bitnet.cpp's types and order."""
    from .model.checkpoint import expected_tensors
    from .model.config import BitNetConfig

    want = expected_tensors(BitNetConfig.from_dict(config))
    out = {}
    for name, shape in want.items():
        if name.endswith("_scale"):
            continue  # written inside its weight's I2_S trailer
        if name not in weights:
            raise ValueError(f"missing tensor {name!r}")
        w = weights[name]
        if tuple(np.shape(w)) != tuple(shape):
            raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, got {tuple(np.shape(w))}")
        if name.endswith("_proj.weight"):
            if name + "_scale" not in weights:
                raise ValueError(f"missing tensor {name + '_scale'!r} (the scale of {name!r})")
            out[hf_to_gguf_name(name)] = _i2s(name, w, weights[name + "_scale"])
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            out[hf_to_gguf_name(name)] = _f16(name, w)
        else:
            out[hf_to_gguf_name(name)] = np.ascontiguousarray(w, np.float32)
    return out


def to_gguf(model_or_dir, path, progress: bool = True) -> Path:
    """Write a bitnet.cpp-compatible GGUF (I2_S) file; returns its path.

    Args:
        model_or_dir: an HF BitNet directory (packed or bf16 master, with ``tokenizer.json``),
            or a model object with ``.to_checkpoint() -> (config, weights)`` and ``.tokenizer``.
        path: output ``.gguf`` file.
        progress: show a tqdm bar while writing tensors.

    Raises ValueError naming the tensor when a shape does not fit I2_S (``in_features`` must
    be a multiple of 128), a tensor is missing, or the tokenizer is not byte-level BPE.
    """
    from .model.config import BitNetConfig

    config, weights, tokenizer, template, name = _load_source(model_or_dir)
    cfg = BitNetConfig.from_dict(config).to_dict()  # normalizes rope_parameters, head_dim
    tensors = gguf_tensors(cfg, weights)
    meta = {**gguf_model_metadata(cfg, name=name),
            **tokenizer_to_gguf(tokenizer, vocab_size=cfg["vocab_size"], bos_token_id=cfg["bos_token_id"],
                                eos_token_id=cfg["eos_token_id"], pad_token_id=cfg.get("pad_token_id"),
                                chat_template=template)}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tensors), desc="writing GGUF", unit="tensor")
    try:
        tick = (lambda k, n, t: bar.update(1)) if bar is not None else None
        return write_gguf(path, meta, tensors, progress=tick)
    finally:
        if bar is not None:
            bar.close()
