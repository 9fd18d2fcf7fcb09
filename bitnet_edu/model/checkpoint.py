"""Read an HF BitNet checkpoint directory into the canonical ``(config, weights)`` form.

Canonical form (shared with the GGUF reader/exporter):

* ``config``: dict of HF ``config.json`` keys.
* ``weights``: ``{hf_name: np.ndarray}``; each linear ``*_proj.weight`` is int8 ternary
  ``[out, in]`` with its ``*_proj.weight_scale`` float32 ``[1]`` (the scale MULTIPLIES the
  output); every other tensor (embedding, norms) is float32.

Two on-disk flavours are accepted: the packed offline checkpoint (uint8 ``[out/4, in]``, four
output-row quarters per byte, plus a bf16 ``weight_scale``) and the bf16 master weights
(``quantization_mode: online`` or no quantization config), ternarized here with absmean.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from ..packing import unpack_hf
from ..quant import absmean_ternary
from .config import BitNetConfig
from .safetensors_io import read_safetensors, safetensors_header

__all__ = ["read_hf_checkpoint", "iter_hf_checkpoint", "expected_tensors", "LINEARS",
           "is_linear", "check_zero_linear"]

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
_LINEAR = re.compile(r".*_proj\.weight$")


def is_linear(name: str) -> bool:
    return bool(_LINEAR.match(name))


def expected_tensors(cfg: BitNetConfig) -> dict[str, tuple]:
    """Every canonical tensor name -> its shape (linear weights unpacked ``[out, in]``)."""
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    lin = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
           "self_attn.o_proj": (h, q), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h),
           "mlp.down_proj": (h, f)}
    norm = {"input_layernorm": h, "post_attention_layernorm": h, "self_attn.attn_sub_norm": q,
            "mlp.ffn_sub_norm": f}
    out = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        for k, shape in lin.items():
            out[f"model.layers.{i}.{k}.weight"] = shape
            out[f"model.layers.{i}.{k}.weight_scale"] = (1,)
        for k, n in norm.items():
            out[f"model.layers.{i}.{k}.weight"] = (n,)
    return out


def check_zero_linear(name: str, q: np.ndarray) -> None:
    """Warn when a linear layer is all zeros (a known defect of some 2B4T hub revisions)."""
    if not q.any():
        warnings.warn(f"linear weight {name} is entirely zero: this checkpoint revision is probably "
                      "damaged (see microsoft/BitNet issue #608); pin an older --revision",
                      stacklevel=3)


def _safetensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if not single.exists():
        raise ValueError(f"{path}: no model.safetensors (or model.safetensors.index.json) found")
    return [single]


def _quant_mode(config: dict, raw: dict) -> str:
    qc = config.get("quantization_config") or {}
    if qc:
        if qc.get("quant_method", "bitnet") != "bitnet":
            raise ValueError(f"quantization_config.quant_method={qc.get('quant_method')!r} is not 'bitnet'")
        if qc.get("linear_class", "autobitlinear") != "autobitlinear":
            raise ValueError(f"linear_class={qc.get('linear_class')!r}: only 'autobitlinear' (the 2B4T "
                             "convention: weight_scale multiplies) is supported")
        return qc.get("quantization_mode", "offline")
    return "offline" if any(k.endswith("_scale") for k in raw) else "online"


def iter_hf_checkpoint(path, *, progress=None):
    """Yield ``(config_dict, None)`` first, then canonical ``(name, array)`` one tensor at a time.

    Streaming keeps peak memory at one unpacked tensor while a caller repacks the weights.
    ``progress``: optional callable ``(n_done, n_total, name)``.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"{path}: no config.json; is this an HF model directory?")
    config = json.loads(cfg_path.read_text())
    cfg = BitNetConfig.from_dict(config)
    raw = {}
    for f in _safetensor_files(path):
        header, _ = safetensors_header(f)  # validates sizes and offsets before any read
        raw.update({n: (f, e) for n, e in header.items()})
    mode = _quant_mode(config, raw)
    want = expected_tensors(cfg)
    missing = [n for n in want if n not in raw and not (mode == "online" and n.endswith("_scale"))]
    if missing:
        raise ValueError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    yield config, None
    cache: dict[Path, dict] = {}
    names = [n for n in want if n in raw or not n.endswith("_scale")]
    for k, name in enumerate(names):
        if name.endswith("_scale"):
            continue  # handled together with its weight
        f, entry = raw[name]
        arrays = cache.get(f) or cache.setdefault(f, read_safetensors(f, raw_bf16=True))
        a = arrays[name]
        if is_linear(name):
            for item in _linear(name, a, entry["dtype"], arrays, mode, want[name]):
                yield item
        else:
            yield name, _float(name, a, entry["dtype"], want[name])
        if progress:
            progress(k + 1, len(names), name)


def _float(name, a, dtype, shape) -> np.ndarray:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F32", "F16", "F64"):
        return np.asarray(a, np.float32)
    raise ValueError(f"tensor {name!r}: expected a float dtype (BF16/F16/F32), got {dtype}")


def _linear(name, a, dtype, arrays, mode, shape):
    out, k = shape
    sname = name + "_scale"
    if mode == "offline":
        if dtype not in ("U8", "I8") or tuple(a.shape) != (out // 4, k):
            raise ValueError(f"tensor {name!r}: a packed offline linear must be uint8 of shape "
                             f"{(out // 4, k)}, got {dtype} {tuple(a.shape)}")
        try:
            q = unpack_hf(np.asarray(a).view(np.uint8))
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
        if sname not in arrays:
            raise ValueError(f"missing tensor {sname!r} (the scale of {name!r})")
        s = arrays[sname]
        s = (s.astype(np.uint32) << 16).view(np.float32) if s.dtype == np.uint16 else s
        s = np.asarray(s, np.float32).reshape(-1)
        if s.size != 1 or not np.isfinite(s[0]):
            raise ValueError(f"tensor {sname!r}: expected one finite scale, got shape {s.shape} {s[:3]}")
    else:
        w = _float(name, a, dtype, shape)
        q, scale = absmean_ternary(w)
        s = np.array([scale], np.float32)
    check_zero_linear(name, q)
    yield name, q
    yield sname, s


def read_hf_checkpoint(path, *, progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a packed or bf16-master HF directory: returns canonical ``(config, weights)``."""
    it = iter_hf_checkpoint(path, progress=progress)
    config, _ = next(it)
    return config, dict(it)
