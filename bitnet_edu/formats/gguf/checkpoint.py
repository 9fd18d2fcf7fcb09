"""A bitnet.cpp GGUF (``bitnet-b1.58`` / ``bitnet-25``, I2_S) <-> the canonical checkpoint.

Canonical checkpoint (:mod:`bitnet_edu.formats.schema`): ``(config, weights)`` with HF
``config.json`` keys and HF tensor names; each linear ``*_proj.weight`` int8 ternary
``[out, in]`` with its float32 ``[1]`` ``*_proj.weight_scale`` (the scale multiplies), every
other tensor float32.  The GGUF names and metadata keys are listed in ``docs/formats.md``.
"""

from __future__ import annotations

import re

import numpy as np

from ...config import BitNetConfig
from ...quant import absmean_ternary
from ..schema import RowBlocks, check_zero_linear, expected_tensors, is_linear
from .container import (GGML_BF16, GGML_F16, GGML_F32, GGML_I2_S, T_FLOAT32, T_STRING, T_UINT32,
                        GGUFError, GGUFReader, Value)
from .tokenizer import tokenizer_from_gguf

__all__ = ["read_gguf_checkpoint", "iter_gguf_checkpoint", "gguf_to_hf_name", "hf_to_gguf_name",
           "config_from_gguf", "gguf_model_metadata", "ARCHITECTURES", "LLAMA_FTYPE_MOSTLY_I2_S"]

ARCHITECTURES = ("bitnet-b1.58", "bitnet-25")
LLAMA_FTYPE_MOSTLY_I2_S = 40  # general.file_type of bitnet.cpp's I2_S files

# GGUF block tensor -> HF module inside model.layers.N
_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "attn_sub_norm": "self_attn.attn_sub_norm",
    "ffn_sub_norm": "mlp.ffn_sub_norm",
}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_GLOBAL_INV = {v: k for k, v in _GLOBAL.items()}
_GGUF_BLK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_HF_BLK = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")

# GGUF key (after the "<arch>." prefix) -> HF config key
_HPARAMS = {
    "vocab_size": "vocab_size", "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads", "rope.dimension_count": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta",
}
_HPARAMS_INV = {v: k for k, v in _HPARAMS.items()}
_FLOAT_HPARAMS = ("rms_norm_eps", "rope_theta")
_FLOAT_TYPES = (GGML_F32, GGML_F16, GGML_BF16)


def gguf_to_hf_name(name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (ValueError if
    unknown)."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _GGUF_BLK.fullmatch(name)
    if not m or m.group(2) not in _BLOCK:
        raise ValueError(f"unexpected tensor {name!r} in a BitNet GGUF")
    return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.weight"


def hf_to_gguf_name(name: str) -> str:
    """Inverse of :func:`gguf_to_hf_name`."""
    if name in _GLOBAL_INV:
        return _GLOBAL_INV[name]
    m = _HF_BLK.fullmatch(name)
    if not m or m.group(2) not in _BLOCK_INV:
        raise ValueError(f"no GGUF name for tensor {name!r}")
    return f"blk.{m.group(1)}.{_BLOCK_INV[m.group(2)]}.weight"


def config_from_gguf(meta: dict) -> dict:
    """HF ``config.json`` keys from GGUF metadata (``bitnet-b1.58`` or ``bitnet-25``)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise GGUFError(f"general.architecture={arch!r}: expected one of {ARCHITECTURES}")
    cfg = {}
    for key, hf in _HPARAMS.items():
        v = meta.get(f"{arch}.{key}")
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise GGUFError(f"metadata {arch}.{key} must be a number, got {type(v).__name__}")
        if hf not in _FLOAT_HPARAMS and not 1 <= v < 2**31:
            raise GGUFError(f"metadata {arch}.{key}={v} is not a positive size")
        cfg[hf] = float(v) if hf in _FLOAT_HPARAMS else int(v)
    for hf in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads"):
        if hf not in cfg:
            raise GGUFError(f"metadata {arch}.{_HPARAMS_INV[hf]} (HF {hf}) is missing")
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    cfg.setdefault("rms_norm_eps", 1e-5)
    cfg.setdefault("rope_theta", 10000.0)
    cfg.setdefault("head_dim", cfg["hidden_size"] // max(cfg["num_attention_heads"], 1))
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in cfg and isinstance(tokens, list):
        cfg["vocab_size"] = len(tokens)
    bos, eos, eot, pad = (meta.get(f"tokenizer.ggml.{k}_token_id")
                          for k in ("bos", "eos", "eot", "padding"))
    for k, v in (("bos", bos), ("eos", eos), ("eot", eot), ("padding", pad)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise GGUFError(f"metadata tokenizer.ggml.{k}_token_id={v!r} is not a token id")
    act = meta.get(f"{arch}.hidden_activation", "relu2")
    if not isinstance(act, str) or act != "relu2":
        raise GGUFError(f"metadata {arch}.hidden_activation={act!r}: only 'relu2' (squared "
                        "ReLU, BitNet b1.58's FFN) is supported")
    cfg.update(bos_token_id=bos,
               eos_token_id=[eos, eot] if eot is not None and eos is not None else eos,
               pad_token_id=pad, hidden_act="relu2",
               tie_word_embeddings=True, model_type="bitnet", architectures=["BitNetForCausalLM"])
    return cfg


def gguf_model_metadata(config: dict, *, name: str = "bitnet_edu",
                        arch: str = "bitnet-b1.58") -> dict:
    """The ``general.*`` and ``<arch>.*`` metadata bitnet.cpp reads, typed as it expects."""
    meta = {"general.architecture": Value(T_STRING, arch), "general.name": Value(T_STRING, name),
            "general.file_type": Value(T_UINT32, LLAMA_FTYPE_MOSTLY_I2_S),
            "general.quantization_version": Value(T_UINT32, 2)}
    for key, hf in _HPARAMS.items():
        v = config[hf]
        meta[f"{arch}.{key}"] = (Value(T_FLOAT32, float(v)) if hf in _FLOAT_HPARAMS
                                 else Value(T_UINT32, int(v)))
    # the FFN activation, for readers that would otherwise build LLaMA's SiLU for this arch
    # (bitnet.cpp's pending fixes and llama.cpp read it; see the README's bitnet.cpp notes)
    meta[f"{arch}.hidden_activation"] = Value(T_STRING, config.get("hidden_act", "relu2"))
    head_dim, heads = config["head_dim"], config["num_attention_heads"]
    if head_dim * heads != config["hidden_size"]:  # llama.cpp then needs the explicit sizes
        meta[f"{arch}.attention.key_length"] = Value(T_UINT32, int(head_dim))
        meta[f"{arch}.attention.value_length"] = Value(T_UINT32, int(head_dim))
    return meta


def _expected_shapes(config: dict, path="GGUF") -> dict:
    try:
        return expected_tensors(BitNetConfig.from_dict(config))
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise GGUFError(f"{path}: the metadata gives an invalid model config: {e}") from None


def _linear(reader: GGUFReader, gname: str, name: str):
    """An I2_S linear (or an unquantized F32/F16 one, ternarized with absmean like bitnet.cpp)."""
    t = reader.tensors[gname]
    if t.ggml_type == GGML_I2_S:
        q, scale = reader.i2s(gname)
    elif t.ggml_type in (GGML_F32, GGML_F16):
        try:
            q, scale = absmean_ternary(_finite(reader, gname, reader.float32(gname)))
        except ValueError as e:
            raise GGUFError(f"{reader.path}: linear tensor {gname!r}: {e}") from None
    else:
        raise GGUFError(f"{reader.path}: linear tensor {gname!r} is {t.type_name}; expected I2_S")
    return q, np.array([scale], np.float32)


def iter_gguf_checkpoint(path, progress: bool = False, *, blocks: bool = False):
    """Yield ``(config, tokenizer)`` first, then canonical ``(hf_name, array)`` one at a time.

    Everything about the file (container, config, tokenizer, tensor names and shapes) is checked
    before the first yield; streaming then keeps peak memory at one unpacked tensor while the
    caller repacks it (the 2B4T's linears are 2.1 GB as int8).  Names come in the canonical
    order.  ``blocks=True`` hands the 2-D float tensors (``token_embd``, an ``output``) over as
    :class:`~bitnet_edu.formats.schema.RowBlocks` read a block of rows at a time (the 2B4T
    embedding is 1.3 GB as float32).
    """
    reader = GGUFReader(path)
    try:
        config = config_from_gguf(reader.metadata)
        tokenizer = tokenizer_from_gguf(reader.metadata)
    except GGUFError as e:
        raise GGUFError(f"{reader.path}: {e}") from None
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        reader.metadata.pop(key, None)  # now in the tokenizer: 2B4T's are ~40 MB of Python strings
    names = {}
    for gname in reader.tensors:
        try:
            names[gguf_to_hf_name(gname)] = gname
        except ValueError as e:
            raise GGUFError(f"{reader.path}: {e}") from None
    if "lm_head.weight" in names:
        config["tie_word_embeddings"] = False
    if config["num_hidden_layers"] > len(names):  # also bounds the work of listing expected names
        raise GGUFError(f"{reader.path}: block_count={config['num_hidden_layers']} but the file "
                        f"has only {len(names)} tensors")
    want = {n: tuple(s) for n, s in _expected_shapes(config, reader.path).items()
            if not n.endswith("_scale")}
    missing = [n for n in want if n not in names]
    if missing:
        raise GGUFError(f"{reader.path}: missing tensor {hf_to_gguf_name(missing[0])!r} "
                        f"(HF {missing[0]!r}; {len(missing)} missing in all)")
    extra = [names[n] for n in names if n not in want]
    if extra:
        raise GGUFError(f"{reader.path}: tensor {extra[0]!r} does not belong to a model with "
                        f"{config['num_hidden_layers']} layers")
    for name, shape in want.items():
        if reader.tensors[names[name]].shape != shape:
            raise GGUFError(f"{reader.path}: tensor {names[name]!r} has shape "
                            f"{reader.tensors[names[name]].shape}, expected {shape} from the "
                            "metadata")
    yield config, tokenizer
    for name in _progress(list(want), progress, "reading GGUF"):
        gname = names[name]
        if is_linear(name):
            q, scale = _linear(reader, gname, name)
            check_zero_linear(name, q)
            yield name, q
            del q  # before the scale: the consumer may pack and free the weight then
            yield name + "_scale", scale
        elif blocks and len(want[name]) == 2 and reader.tensors[gname].ggml_type in _FLOAT_TYPES:
            yield name, RowBlocks(want[name], lambda a, b, g=gname: _finite(
                reader, g, reader.float32(g, rows=(a, b))))
        else:
            yield name, _finite(reader, gname, reader.float32(gname))


def _finite(reader: GGUFReader, gname: str, a: np.ndarray) -> np.ndarray:
    """``a`` if every value is finite, else GGUFError naming the file and tensor."""
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise GGUFError(f"{reader.path}: tensor {gname!r} has {bad} non-finite value(s) "
                        "(NaN or inf)")
    return a


def read_gguf_checkpoint(path, progress: bool = True):
    """Read a bitnet.cpp GGUF file into the canonical checkpoint and its tokenizer.

    Returns ``(config: dict, weights: {hf_name: np.ndarray}, tokenizer: tokenizers.Tokenizer)``.
    Raises :class:`GGUFError` (a ValueError) naming the tensor or byte offset on any problem:
    corrupt container, wrong architecture, missing / unexpected tensor, wrong shape.
    """
    it = iter_gguf_checkpoint(path, progress=progress)
    config, tokenizer = next(it)
    return config, dict(it), tokenizer


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="tensor")
