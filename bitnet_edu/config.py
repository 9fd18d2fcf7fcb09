"""The model's shape and constants: :class:`BitNetConfig` (the one model-shape type) and presets.

Field names follow the Hugging Face ``config.json`` (the 2B4T config table is in
``docs/formats.md``).  The engine, training, :mod:`bitnet_edu.memory`, :mod:`bitnet_edu.energy`,
the benchmarks and the widgets all describe a model with it, and :data:`PRESETS` is the one
place the published shapes are written down.  Torch-free and NumPy-free.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = ["BitNetConfig", "PRESETS", "SHAPE_KEYS", "LINEAR_KINDS", "MAX_SIZE",
           "MAX_POSITIONS"]

#: Published shapes, as ``BitNetConfig`` keyword arguments (``BitNetConfig.preset(name)``).
#: The LLaMA-2 rows are comparison shapes for :mod:`bitnet_edu.energy` (their configs' sizes;
#: a LLaMA uses SiLU and float weights, so only the sizes carry over).
PRESETS = {
    "2b4t": dict(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                 num_attention_heads=20, num_key_value_heads=5, max_position_embeddings=4096,
                 rope_theta=500000.0, eos_token_id=[128001, 128009]),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2),
    "llama2-13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                       num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                       max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2),
    "llama2-70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                       num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                       max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2),
}

#: The fields that fix every tensor's shape (what counting parameters or bytes needs).
SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")

#: The seven per-layer projections, the only tensors BitNet stores as ternary.
LINEAR_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_2B4T = PRESETS["2b4t"]  # the defaults are the 2B4T shape

#: the integer fields, whole numbers in [1, MAX_SIZE] (vocab from 0; positions up to
#: MAX_POSITIONS)
_SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
#: no real model has a dimension (or layer count) beyond this; a larger value is a broken file
MAX_SIZE = 2**20
#: the longest context a config may claim (RoPE tables and caches grow with the context used)
MAX_POSITIONS = 2**24


def _np_integer():
    """numpy's integer base class if numpy is imported (this module itself is NumPy-free)."""
    np = sys.modules.get("numpy")
    return np.integer if np is not None else int


def _np_floating():
    np = sys.modules.get("numpy")
    return np.floating if np is not None else float


@dataclass
class BitNetConfig:
    """Shape of a BitNet b1.58 transformer; field names follow the HF ``config.json``.

    The defaults are the 2B4T shape (``BitNetConfig()``; ``BitNetConfig.preset("2b4t")`` also
    sets its second end-of-turn id).
    """

    vocab_size: int = _2B4T["vocab_size"]
    hidden_size: int = _2B4T["hidden_size"]
    intermediate_size: int = _2B4T["intermediate_size"]
    num_hidden_layers: int = _2B4T["num_hidden_layers"]
    num_attention_heads: int = _2B4T["num_attention_heads"]
    num_key_value_heads: int = _2B4T["num_key_value_heads"]
    head_dim: int | None = None  # default hidden_size // num_attention_heads
    max_position_embeddings: int = _2B4T["max_position_embeddings"]
    rms_norm_eps: float = 1e-5
    rope_theta: float = _2B4T["rope_theta"]
    hidden_act: str = "relu2"
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 128000
    eos_token_id: int | list | None = 128001
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, kept for export

    def __post_init__(self):
        self._check_fields()
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
            if self.head_dim < 1:
                raise ValueError(f"head_dim = hidden_size // num_attention_heads = "
                                 f"{self.hidden_size} // {self.num_attention_heads} is 0")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} must be a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.hidden_act != "relu2":
            raise ValueError(f"hidden_act={self.hidden_act!r} not supported (BitNet uses 'relu2')")

    def _check_fields(self) -> None:
        """ValueError naming the key for a value no model can have: a size that is not a whole
        number in ``[1, MAX_SIZE]`` (``vocab_size`` may be 0; ``max_position_embeddings`` up to
        ``MAX_POSITIONS``), a bool, a
        ``rope_theta`` that is not a finite number > 0, an ``rms_norm_eps`` that is not a
        finite number >= 0, a token id that is not a whole number in ``[0, 2**31)`` (or a
        list of them)."""
        def whole(v) -> bool:
            return isinstance(v, (int, _np_integer())) and not isinstance(v, bool)

        for key in _SIZE_KEYS:
            v = getattr(self, key)
            if key == "head_dim" and v is None:
                continue
            top = MAX_POSITIONS if key == "max_position_embeddings" else MAX_SIZE
            low = 0 if key == "vocab_size" else 1  # 0: a shape without a head (energy costs)
            if not whole(v) or not low <= v <= top:
                raise ValueError(f"config {key}={v!r}: expected a whole number in "
                                 f"[{low}, {top}]")
            setattr(self, key, int(v))
        for key, low in (("rope_theta", "> 0"), ("rms_norm_eps", ">= 0")):
            v = getattr(self, key)
            ok = isinstance(v, (int, float, _np_floating(), _np_integer())) \
                and not isinstance(v, bool) and math.isfinite(v) \
                and (v > 0 if low == "> 0" else v >= 0)
            if not ok:
                raise ValueError(f"config {key}={v!r}: expected a finite number {low}")
            setattr(self, key, float(v))
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"config tie_word_embeddings={self.tie_word_embeddings!r}: expected "
                             "true or false")
        if not isinstance(self.hidden_act, str):
            raise ValueError(f"config hidden_act={self.hidden_act!r}: expected a string")
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, key)
            items = v if isinstance(v, (list, tuple)) and key == "eos_token_id" else [v]
            if v is None or (items and all(whole(i) and 0 <= i < 2**31 for i in items)):
                continue
            if key == "pad_token_id" and whole(v) and -2**31 <= v < 2**31:
                continue  # some configs say -1 for "no padding"; padding is never looked up
            raise ValueError(f"config {key}={v!r}: expected a token id (a whole number in "
                             "[0, 2**31))"
                             + (" or a non-empty list of them; null for none"
                                if key == "eos_token_id" else ""))
        if not isinstance(self.extra, dict):
            raise ValueError("config extra must be a dict")

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [int(x) for x in (e if isinstance(e, (list, tuple)) else [e])]

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides) -> "BitNetConfig":
        """The published shape ``name`` (a key of :data:`PRESETS`, any case), fields overridden."""
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "BitNetConfig":
        """Build from config.json keys; accepts a top-level ``rope_theta`` (the real 2B4T file) or
        transformers-5's ``rope_parameters`` dict (only the default rope type is supported)."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object (key: value), got "
                             f"{type(d).__name__}")
        d = dict(d)
        rope = d.pop("rope_parameters", None) or {}
        scaling = d.pop("rope_scaling", None)
        for key, r in (("rope_parameters", rope), ("rope_scaling", scaling or {})):
            if not isinstance(r, dict):
                raise ValueError(f"config {key}={r!r}: expected an object")
            kind = r.get("rope_type", r.get("type", "default"))
            if kind != "default":
                raise ValueError(f"rope type {kind!r} not supported (BitNet uses plain RoPE)")
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        known = {k for k in cls.__dataclass_fields__ if k != "extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path) -> "BitNetConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None

    @classmethod
    def from_shape(cls, cfg) -> "BitNetConfig":
        """Only the shape of ``cfg`` (the :data:`SHAPE_KEYS`), every other field at its default.

        ``cfg`` is a ``BitNetConfig``, a ``config.json`` dict or any object with those attribute
        names; other keys are ignored (so a LLaMA ``config.json`` works too).  The first five
        keys are required (``ValueError`` names a missing one); ``num_key_value_heads`` defaults
        to ``num_attention_heads`` (no grouped-query attention, as in transformers), ``head_dim``
        to ``hidden_size // num_attention_heads``, ``tie_word_embeddings`` to True.
        """
        get = cfg.get if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, None))
        d = {k: get(k) for k in SHAPE_KEYS}
        for k in SHAPE_KEYS[:5]:
            if d[k] is None:
                raise ValueError(f"config has no {k!r}")
        if d["num_key_value_heads"] is None:
            d["num_key_value_heads"] = d["num_attention_heads"]
        try:
            kwargs = {k: (bool(v) if k == "tie_word_embeddings" else int(v))
                      for k, v in d.items() if v is not None}
        except (TypeError, ValueError):
            raise ValueError(f"config shape keys must be whole numbers, got "
                             f"{ {k: v for k, v in d.items() if v is not None} }") from None
        return BitNetConfig(**kwargs)

    def to_dict(self) -> dict:
        """HF ``config.json`` keys (with top-level ``rope_theta``, as the real 2B4T file).

        Only ``BitNetConfig``'s own fields: a subclass's extra fields (training's ``quantized``)
        never reach a ``config.json``.
        """
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(BitNetConfig)
             if f.name != "extra"}  # copies, as dataclasses.asdict made: eos lists stay ours
        out = {**self.extra, **d}
        out.setdefault("architectures", ["BitNetForCausalLM"])
        out.setdefault("model_type", "bitnet")
        return out

    # --- tensor shapes and parameter counts ----------------------------------------------------

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """The seven projections of one layer: kind (:data:`LINEAR_KINDS`) -> ``(out, in)``."""
        h, f, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d  # GQA: k, v narrower
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}

    def matrix_shapes(self) -> dict[tuple[int, int], tuple[str, ...]]:
        """The distinct projection shapes ``(out, in)`` -> the kinds that have it, in layer order
        (2B4T: q/o, k/v, gate/up, down — the four matrices a kernel benchmark races)."""
        groups: dict[tuple[int, int], tuple[str, ...]] = {}
        for kind, shape in self.linear_shapes().items():
            groups[shape] = groups.get(shape, ()) + (kind,)
        return groups

    def param_counts(self) -> dict[str, int]:
        """Parameters of each tensor kind, summed over all layers.

        Keys: ``embedding``, the seven :data:`LINEAR_KINDS`, ``norms`` (four RMSNorm weights per
        layer plus the final norm), ``lm_head`` (0 when tied), then ``linear`` (the seven
        summed), ``total`` (all of the above) and ``scales`` (one absmean weight scale per
        linear tensor, as the HF checkpoint stores them; not part of ``total``).
        """
        h, n = self.hidden_size, self.num_hidden_layers
        shapes = self.linear_shapes()
        counts = {"embedding": self.vocab_size * h}
        counts.update({k: n * o * i for k, (o, i) in shapes.items()})
        # input_layernorm, post_attention_layernorm [h]; attn_sub_norm [q]; ffn_sub_norm [f];
        # the final norm [h]
        counts["norms"] = n * (2 * h + shapes["o_proj"][1] + self.intermediate_size) + h
        counts["lm_head"] = 0 if self.tie_word_embeddings else self.vocab_size * h
        counts["linear"] = sum(counts[k] for k in LINEAR_KINDS)
        counts["total"] = sum(counts[k] for k in ("linear", "embedding", "norms", "lm_head"))
        counts["scales"] = n * len(LINEAR_KINDS)
        return counts

    @property
    def n_params(self) -> int:
        """Learned parameters (the tied embedding counted once; weight scales not included)."""
        return self.param_counts()["total"]

    @property
    def linear_params(self) -> int:
        """Weights of all q/k/v/o and gate/up/down projections (the ternary ones in BitNet)."""
        return self.param_counts()["linear"]

    @property
    def head_params(self) -> int:
        """The output head ``vocab x hidden`` (tied to the embedding or not: read every token)."""
        return self.vocab_size * self.hidden_size

    @property
    def kv_values_per_position(self) -> int:
        """Key and value entries stored per token of context, over all layers."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim

