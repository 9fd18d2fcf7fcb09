"""HF BitNet checkpoint directories: read into the canonical form, write the packed format.

A directory holds ``config.json``, ``model.safetensors`` (or shards with
``model.safetensors.index.json``) and usually ``tokenizer.json``, ``tokenizer_config.json`` and
``generation_config.json``.  Two weight flavours exist (``docs/formats.md``):

* packed offline (``quantization_mode: offline``): each linear uint8 ``[out/4, in]``, four
  output-row quarters per byte (:func:`bitnet_edu.packing.pack_hf`), plus a bf16 ``[1]``
  ``weight_scale``; everything else bf16.  :func:`write_hf_checkpoint` writes this flavour.
* the bf16 master (``quantization_mode: online`` or no quantization config): float linears,
  ternarized here with absmean as transformers does on the fly.

Reading streams: :func:`iter_hf_checkpoint` reads one tensor at a time with plain file reads,
so a load never holds the file (or more than one unpacked tensor) next to the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import BitNetConfig
from ..packing import pack_hf, unpack_hf
from ..quant import absmean_ternary
from ..tokenizer import load_tokenizer
from .safetensors import SafetensorsFile, SafetensorsWriter, bf16_to_float32, float32_to_bf16
from .schema import RowBlocks, check_zero_linear, expected_tensors, in_order, is_linear, is_scale

__all__ = ["iter_hf_checkpoint", "read_hf_checkpoint", "write_hf_checkpoint", "read_tokenizer",
           "read_generation_config", "read_chat_template", "QUANT_CONFIG"]

#: ``quantization_config`` of a packed checkpoint (the real 2B4T file's)
QUANT_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                "quantization_mode": "offline"}
_FLOATS = ("BF16", "F32", "F16", "F64")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def read_tokenizer(path):
    """``tokenizers.Tokenizer`` from the directory's ``tokenizer.json``, or None if absent."""
    return load_tokenizer(path)


def read_generation_config(path) -> dict:
    """``generation_config.json`` of the directory as a dict (empty if absent)."""
    g = Path(path) / "generation_config.json"
    return _json(g) if g.exists() else {}


def read_chat_template(path) -> str | None:
    """The ``chat_template`` of ``tokenizer_config.json``, or None."""
    t = Path(path) / "tokenizer_config.json"
    return _json(t).get("chat_template") if t.exists() else None


def _safetensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(_json(index)["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if not single.exists():
        raise ValueError(f"{path}: no model.safetensors (or model.safetensors.index.json) found")
    return [single]


def _quant_mode(config: dict, raw: dict) -> str:
    qc = config.get("quantization_config") or {}
    if qc:
        if qc.get("quant_method", "bitnet") != "bitnet":
            raise ValueError(f"quantization_config.quant_method={qc.get('quant_method')!r} is "
                             "not 'bitnet'")
        if qc.get("linear_class", "autobitlinear") != "autobitlinear":
            raise ValueError(f"linear_class={qc.get('linear_class')!r}: only 'autobitlinear' "
                             "(the 2B4T convention: weight_scale multiplies) is supported")
        return qc.get("quantization_mode", "offline")
    return "offline" if any(k.endswith("_scale") for k in raw) else "online"


def iter_hf_checkpoint(path, *, progress=None, blocks: bool = False):
    """Yield ``(config_dict, None)`` first, then canonical ``(name, array)`` one tensor at a time.

    Names come in the canonical order (:func:`~bitnet_edu.formats.schema.expected_tensors`);
    config, file headers and the presence of every tensor are checked before the first yield.
    ``blocks=True`` hands the 2-D float tensors (embedding, untied ``lm_head``) over as
    :class:`~bitnet_edu.formats.schema.RowBlocks` read from the file a block of rows at a time.
    ``progress``: optional callable ``(n_done, n_total, name)``.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"{path}: no config.json; is this an HF model directory?")
    config = _json(cfg_path)
    cfg = BitNetConfig.from_dict(config)
    files = {}
    for f in _safetensor_files(path):
        st = SafetensorsFile(f)  # validates sizes and offsets before any read
        files.update({n: st for n in st.header})
    mode = _quant_mode(config, files)
    want = expected_tensors(cfg)
    missing = [n for n in want if n not in files and not (mode == "online" and is_scale(n))]
    if missing:
        raise ValueError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    yield config, None
    names = [n for n in want if not is_scale(n)]
    for k, name in enumerate(names):
        st = files[name]
        if is_linear(name):
            yield from _linear(name, st, files, mode, want[name])
        elif blocks and len(want[name]) == 2:
            _check_float(name, st, want[name])
            yield name, RowBlocks(want[name], lambda a, b, name=name, st=st:
                                  _widen(st.read(name, rows=(a, b)), st.dtype(name)))
        else:
            _check_float(name, st, want[name])
            yield name, _widen(st.read(name), st.dtype(name))
        if progress:
            progress(k + 1, len(names), name)


def _check_float(name, st: SafetensorsFile, shape) -> None:
    if st.shape(name) != tuple(shape):
        raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, got {st.shape(name)}")
    if st.dtype(name) not in _FLOATS:
        raise ValueError(f"tensor {name!r}: expected a float dtype (BF16/F16/F32), got "
                         f"{st.dtype(name)}")


def _widen(a: np.ndarray, dtype: str) -> np.ndarray:
    """Stored float bytes (bf16 as uint16) -> float32."""
    return bf16_to_float32(a) if dtype == "BF16" else np.asarray(a, np.float32)


def _linear(name, st: SafetensorsFile, files: dict, mode: str, shape):
    out, k = shape
    sname = name + "_scale"
    if mode == "offline":
        dtype = st.dtype(name)
        if dtype not in ("U8", "I8") or st.shape(name) != (out // 4, k):
            raise ValueError(f"tensor {name!r}: a packed offline linear must be uint8 of shape "
                             f"{(out // 4, k)}, got {dtype} {st.shape(name)}")
        try:
            q = unpack_hf(st.read(name).view(np.uint8))
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
        if sname not in files:
            raise ValueError(f"missing tensor {sname!r} (the scale of {name!r})")
        s = files[sname].read(sname)
        s = _widen(s, files[sname].dtype(sname)).reshape(-1)
        if s.size != 1 or not np.isfinite(s[0]):
            raise ValueError(f"tensor {sname!r}: expected one finite scale, got shape {s.shape} "
                             f"{s[:3]}")
    else:
        _check_float(name, st, shape)
        q, scale = absmean_ternary(_widen(st.read(name), st.dtype(name)))
        s = np.array([scale], np.float32)
    check_zero_linear(name, q)
    yield name, q
    del q  # before the scale: the consumer may pack and free the weight then
    yield sname, s


def read_hf_checkpoint(path, *, progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a packed or bf16-master HF directory: returns canonical ``(config, weights)``."""
    it = iter_hf_checkpoint(path, progress=progress)
    config, _ = next(it)
    return config, dict(it)


# --- writing ---------------------------------------------------------------------------------

def _specs(want: dict) -> dict:
    """The on-disk dtype and shape of each canonical tensor in the packed format."""
    specs = {}
    for name, shape in want.items():
        if is_linear(name):
            if shape[0] % 4:
                raise ValueError(f"tensor {name!r} of shape {shape}: the HF packed layout needs "
                                 "out_features to be a multiple of 4")
            specs[name] = ("U8", (shape[0] // 4, shape[1]))
        else:
            specs[name] = ("BF16", shape)
    return specs


def _packed(name: str, a, shape):
    """One canonical tensor -> its packed-format bytes (an array, or row blocks as a generator)."""
    if isinstance(a, RowBlocks):
        if a.shape != tuple(shape):
            raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, got {a.shape}")
        return (float32_to_bf16(x) for _, x in a.blocks())
    a = np.asarray(a)
    if is_scale(name):
        a = a.reshape(-1)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if is_linear(name):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"tensor {name!r}: expected int8 ternary weights, got {a.dtype}; "
                             "quantize float weights first (bitnet_edu.quant.absmean_ternary)")
        try:
            return pack_hf(a)
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
    return float32_to_bf16(a.astype(np.float32, copy=False))


def _write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=2) + "\n")


def write_hf_checkpoint(out_dir, config, tensors, *, tokenizer=None, tokenizer_config=None,
                        generation_config=None, progress=None) -> Path:
    """Write an HF directory in the packed offline format; returns ``out_dir``.

    Args:
        config: a :class:`~bitnet_edu.config.BitNetConfig` or its ``config.json`` dict; the file
            gets it plus the offline ``quantization_config`` and ``torch_dtype: bfloat16``.
        tensors: the canonical checkpoint, a dict or a stream of ``(name, array)`` (a
            :class:`~bitnet_edu.formats.schema.RowBlocks` for a large float matrix is fine).
            A stream in the canonical order is written as it comes, one tensor in memory.
        tokenizer: a ``tokenizers.Tokenizer`` saved as ``tokenizer.json`` (optional).
        tokenizer_config, generation_config: dicts written as those JSON files (optional).
        progress: optional callable ``(n_done, n_total, name)`` after each tensor.

    transformers' ``BitNetForCausalLM``, :func:`bitnet_edu.load_model` and bitnet.cpp's
    converter read the result.  Raises ValueError naming the tensor on a missing tensor, a wrong
    shape or a non-ternary linear; nothing is left under ``model.safetensors`` then.
    """
    cfg = config if isinstance(config, BitNetConfig) else BitNetConfig.from_dict(config)
    want = expected_tensors(cfg)
    specs = _specs(want)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with SafetensorsWriter(out / "model.safetensors", specs, metadata={"format": "pt"}) as w:
        for k, (name, a) in enumerate(in_order(tensors, list(want))):
            w.write(name, _packed(name, a, want[name]))
            if progress:
                progress(k + 1, len(want), name)
    d = cfg.to_dict()
    d["quantization_config"] = dict(QUANT_CONFIG)
    d.setdefault("torch_dtype", "bfloat16")
    _write_json(out / "config.json", d)
    if generation_config is not None:
        _write_json(out / "generation_config.json", generation_config)
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
    if tokenizer_config is not None:
        _write_json(out / "tokenizer_config.json", tokenizer_config)
    return out
