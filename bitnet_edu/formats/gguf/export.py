"""Export a model to a bitnet.cpp GGUF file (I2_S), so what you train here runs in bitnet.cpp.

The file follows ``microsoft/BitNet-b1.58-2B-4T-gguf``: architecture ``bitnet-b1.58``,
``token_embd`` in f16 (also the output head), norms in f32, the seven linears of each block
in I2_S (2-bit codes in blocks of 128 + a float32 scale), and the gpt2 byte-level BPE
tokenizer embedded as ``tokenizer.ggml.*`` (``docs/formats.md``).

The export streams: the header is written from the config's tensor schema, then each tensor is
converted and written as it comes from the source, so a 2B4T-shape model never has a second
copy of its weights in memory.

    >>> from bitnet_edu.export import to_gguf
    >>> to_gguf("path/to/hf_model_dir", "model-i2_s.gguf")      # or a loaded model object
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...config import BitNetConfig
from ...packing import I2S_BLOCK, check_ternary, pack_i2s
from ..hf import iter_hf_checkpoint, read_chat_template, read_tokenizer
from ..schema import RowBlocks, expected_tensors, in_order, is_linear, is_scale
from .checkpoint import gguf_model_metadata, hf_to_gguf_name
from .container import GGML_F16, GGML_F32, GGML_I2_S, I2S_TRAILER, GGUFWriter, TensorData
from .tokenizer import placeholder_vocab_gguf, tokenizer_to_gguf

__all__ = ["to_gguf", "gguf_tensors"]

_F16_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def _source(model_or_dir):
    """``(config, tensors, tokenizer, chat_template, name)`` from a directory or a model object;
    ``tensors`` is a canonical stream (or dict)."""
    if isinstance(model_or_dir, (str, Path)):
        d = Path(model_or_dir)
        if not (d / "tokenizer.json").exists():
            raise ValueError(f"{d}: no tokenizer.json; GGUF export embeds the tokenizer")
        it = iter_hf_checkpoint(d, blocks=True)
        config, _ = next(it)
        return config, it, read_tokenizer(d), read_chat_template(d), d.name
    m = model_or_dir
    if callable(getattr(m, "iter_checkpoint", None)) and hasattr(m, "config"):
        cfg = m.config
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        tensors = m.iter_checkpoint(blocks=True)
    elif callable(getattr(m, "to_checkpoint", None)):
        config, tensors = m.to_checkpoint()
    else:
        raise ValueError("to_gguf needs an HF model directory or a model object with "
                         f".iter_checkpoint() or .to_checkpoint(); got {type(m).__name__}")
    return config, tensors, getattr(m, "tokenizer", None), getattr(m, "chat_template", None), \
        "bitnet_edu"


def _specs(want: dict) -> dict:
    """``{gguf_name: (ggml_type, shape)}`` in file order; refuses shapes I2_S cannot hold."""
    specs = {}
    for name, shape in want.items():
        if is_scale(name):
            continue  # written inside its weight's I2_S trailer
        if is_linear(name):
            if shape[-1] % I2S_BLOCK:
                raise ValueError(f"tensor {name!r} of shape {tuple(shape)} [out, in]: I2_S needs "
                                 f"in_features to be a multiple of {I2S_BLOCK} (each row is whole "
                                 f"{I2S_BLOCK}-value blocks)")
            specs[hf_to_gguf_name(name)] = (GGML_I2_S, tuple(shape))
        else:
            specs[hf_to_gguf_name(name)] = (GGML_F16 if name in _F16_NAMES else GGML_F32,
                                            tuple(shape))
    return specs


def _i2s(name: str, q, scale) -> list:
    """One linear as I2_S bytes ``[codes, 32-byte trailer]``, after checking it is ternary and
    the scale is one positive finite float."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"tensor {name!r}: expected int8 ternary weights, got {q.dtype}; "
                         "quantize float weights first (bitnet_edu.quant.absmean_ternary)")
    s = np.asarray(scale, np.float32).reshape(-1)
    if s.size != 1 or not np.isfinite(s[0]) or s[0] <= 0:
        raise ValueError(f"tensor {name!r}_scale: expected one positive finite float, got {s[:4]}")
    trailer = np.zeros(I2S_TRAILER, np.uint8)
    trailer[:4] = s[:1].view(np.uint8)  # the scale leads the trailer, it multiplies
    return [pack_i2s(check_ternary(q, name)), trailer]


def _f16(name: str, w):
    """A float matrix as f16, by row blocks when it comes as :class:`RowBlocks`."""
    def half(x):
        h = np.asarray(x, np.float32).astype(np.float16)
        if not np.isfinite(h).all():
            raise ValueError(f"tensor {name!r}: values beyond the float16 range (max 65504) or "
                             "not finite")
        return h
    if isinstance(w, RowBlocks):
        return (half(x) for _, x in w.blocks())
    return half(w)


def _converted(want: dict, tensors):
    """Canonical tensors -> ``(gguf_name, data)`` in file order; ``data`` an array, a list or a
    generator of arrays (row blocks)."""
    weight = None
    for name, a in in_order(tensors, list(want)):
        shape = a.shape if hasattr(a, "shape") else np.shape(a)
        if not is_scale(name) and tuple(shape) != tuple(want[name]):
            raise ValueError(f"tensor {name!r}: expected shape {tuple(want[name])}, got "
                             f"{tuple(shape)}")
        if is_linear(name):
            weight = (name, a)  # the scale comes next
        elif is_scale(name):
            wname, q = weight
            yield hf_to_gguf_name(wname), _i2s(wname, q, a)
        elif name in _F16_NAMES:
            yield hf_to_gguf_name(name), _f16(name, a)
        else:
            yield hf_to_gguf_name(name), np.ascontiguousarray(a, np.float32)


def gguf_tensors(config: dict, weights: dict) -> dict:
    """Canonical weights -> ``{gguf_name: TensorData}`` in bitnet.cpp's types and order."""
    want = expected_tensors(BitNetConfig.from_dict(config))
    specs = _specs(want)
    out = {}
    for gname, data in _converted(want, weights):
        if not isinstance(data, np.ndarray):
            data = np.concatenate([np.asarray(x).reshape(-1).view(np.uint8) for x in data])
        out[gname] = TensorData(specs[gname][0], specs[gname][1], data)
    return out


def to_gguf(model_or_dir, path, progress: bool = True) -> Path:
    """Write a bitnet.cpp-compatible GGUF (I2_S) file; returns its path.

    Args:
        model_or_dir: an HF BitNet directory (packed or bf16 master, with ``tokenizer.json``),
            or a model object with ``.iter_checkpoint()`` (a :class:`~bitnet_edu.BitNetModel`)
            or ``.to_checkpoint() -> (config, weights)``, and optionally ``.tokenizer``.  A model
            without a tokenizer (``random_model``) gets a placeholder vocabulary of the right
            size (``<tok_N>`` tokens, with a warning): enough for speed runs on token ids.
        path: output ``.gguf`` file.
        progress: show a tqdm bar while writing tensors.

    Streams tensor by tensor (peak memory: the source plus about one tensor).  Raises
    ValueError naming the tensor when a shape does not fit I2_S (``in_features`` must be a
    multiple of 128), a tensor is missing, or the tokenizer is not byte-level BPE; no file is
    left behind then.
    """
    config, tensors, tokenizer, template, name = _source(model_or_dir)
    cfg = BitNetConfig.from_dict(config).to_dict()  # normalizes rope_parameters, head_dim
    block = BitNetConfig.from_dict(cfg)
    if not block.sub_norms or block.hidden_act != "relu2" or block.rope_scaling is not None:
        raise ValueError("to_gguf writes bitnet.cpp's 'bitnet-b1.58' architecture (2B4T's block: "
                         "sub-norms, relu2, plain RoPE); this model's block (sub_norms="
                         f"{block.sub_norms}, hidden_act={block.hidden_act!r}, rope_scaling="
                         f"{block.rope_scaling}) is not supported in GGUF export yet")
    want = expected_tensors(block)
    specs = _specs(want)
    ids = dict(bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
               pad_token_id=cfg.get("pad_token_id"))
    if tokenizer is None:
        warnings.warn(f"to_gguf: the model has no tokenizer; writing a placeholder vocabulary of "
                      f"{cfg['vocab_size']} '<tok_N>' tokens (token ids work, text does not)",
                      stacklevel=2)
        vocab = placeholder_vocab_gguf(cfg["vocab_size"], **ids)
    else:
        vocab = tokenizer_to_gguf(tokenizer, vocab_size=cfg["vocab_size"], chat_template=template,
                                  **ids)
    meta = {**gguf_model_metadata(cfg, name=name), **vocab}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(specs), desc="writing GGUF", unit="tensor")
    try:
        with GGUFWriter(path, meta, specs) as w:
            for gname, data in _converted(want, tensors):
                w.write(gname, data)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return Path(path)
