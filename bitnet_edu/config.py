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
           "MAX_POSITIONS", "HIDDEN_ACTS", "LINEAR_CLASSES", "SUB_NORM_ARCHITECTURES",
           "PLAIN_ARCHITECTURES", "MASTER_ARCHITECTURES", "MEMBERS", "EMBEDDING_MEMBERS",
           "UNSUPPORTED_BACKBONES", "EMBEDDING_ACTS", "LAYER_TYPES", "is_master_layout"]

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
    # --- the ternary Llama-layout members (docs/family.md, 2a/2b): LlamaForCausalLM with a
    # ``quant_method: bitnet`` config (linear class bitlinear: the file's weight_scale is
    # 1/absmean), SwiGLU, no sub-norms, untied bf16 head.  Numbers from the config.json of
    # tiiuae/Falcon3-1B-Instruct-1.58bit, -3B/-7B/-10B-Base-1.58bit; the Instruct 3B/7B/10B
    # repos sharing their base's shape is unverified (the file sizes agree).
    "falcon3-1b": dict(vocab_size=131072, hidden_size=2048, intermediate_size=8192,
                       num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6,
                       rope_theta=1000042.0, hidden_act="silu", sub_norms=False,
                       linear_class="bitlinear", tie_word_embeddings=False, bos_token_id=None,
                       eos_token_id=11),
    "falcon3-3b": dict(vocab_size=131072, hidden_size=3072, intermediate_size=9216,
                       num_hidden_layers=22, num_attention_heads=12, num_key_value_heads=4,
                       head_dim=256, max_position_embeddings=4096, rms_norm_eps=1e-6,
                       rope_theta=1000042.0, hidden_act="silu", sub_norms=False,
                       linear_class="bitlinear", tie_word_embeddings=False, bos_token_id=11,
                       eos_token_id=11),
    "falcon3-7b": dict(vocab_size=131072, hidden_size=3072, intermediate_size=23040,
                       num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=4,
                       head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6,
                       rope_theta=1000042.0, hidden_act="silu", sub_norms=False,
                       linear_class="bitlinear", tie_word_embeddings=False, bos_token_id=11,
                       eos_token_id=11),
    "falcon3-10b": dict(vocab_size=131072, hidden_size=3072, intermediate_size=23040,
                        num_hidden_layers=40, num_attention_heads=12, num_key_value_heads=4,
                        head_dim=256, max_position_embeddings=32768, rms_norm_eps=1e-6,
                        rope_theta=1000042.0, hidden_act="silu", sub_norms=False,
                        linear_class="bitlinear", tie_word_embeddings=False, bos_token_id=1,
                        eos_token_id=11),
    # HF1BitLLM/Llama3-8B-1.58-100B-tokens: read from a byte-size-matching copy of its
    # config.json (unverified that the hub file is identical; every number is
    # Meta-Llama-3-8B-Instruct's).  Llama 3 (not 3.1): no rope_scaling.
    "llama3-8b-1.58": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                           num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                           max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                           hidden_act="silu", sub_norms=False, linear_class="bitlinear",
                           tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009),
    # --- 1bitLLM's reproductions of the BitNet b1.58 paper (docs/family.md, 2c): config.json
    # of 1bitLLM/bitnet_b1_58-large and -3B.  ``BitnetForCausalLM`` (custom code, never run):
    # float16 master weights quantized at load, SwiGLU with two sub-norms (inner_attn_ln,
    # ffn_layernorm on disk), tied head, LLaMA-2 vocabulary + <pad> + </line>.
    "1bitllm-large": dict(vocab_size=32002, hidden_size=1536, intermediate_size=4096,
                          num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                          max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                          hidden_act="silu", sub_norms=True, linear_class="autobitlinear",
                          tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                          pad_token_id=32000),
    # head_dim 3200 / 32 = 100: not a power of 2
    "1bitllm-3b": dict(vocab_size=32002, hidden_size=3200, intermediate_size=8640,
                       num_hidden_layers=26, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                       hidden_act="silu", sub_norms=True, linear_class="autobitlinear",
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                       pad_token_id=32000),
    # microsoft/bitnet-embedding-0.6b (docs/family.md, 2d; numbers from bitnet.cpp's
    # docs/bitnet-embeddings-i2s-guide.md, the hub config.json unseen): Qwen3-0.6B's shape,
    # every projection with its own input RMSNorm, q/k head norms, tied (unused) head; the
    # output is the L2-normalized state of an appended <|endoftext|> (151643)
    "bitnet-embedding-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                                  num_hidden_layers=28, num_attention_heads=16,
                                  num_key_value_heads=8, head_dim=128,
                                  max_position_embeddings=32768, rms_norm_eps=1e-6,
                                  rope_theta=1000000.0, hidden_act="silu", sub_norms=False,
                                  projection_norms=True, qk_norm=True, tie_word_embeddings=True,
                                  bos_token_id=None, eos_token_id=151643),
    # microsoft/bitnet-embedding-270m (docs/family.md, 2d; the guide's numbers, the hub
    # config.json unseen): Gemma3's block, every 6th layer full attention, the others a
    # 512-token sliding window (Gemma3-270M's), <eos> (1) appended and pooled, <bos> (2) first
    "bitnet-embedding-270m": dict(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                                  num_hidden_layers=18, num_attention_heads=4,
                                  num_key_value_heads=1, head_dim=256,
                                  max_position_embeddings=32768, rms_norm_eps=1e-6,
                                  rope_theta=10000.0, rope_local_theta=10000.0,
                                  hidden_act="gelu_tanh", sub_norms=False, projection_norms=True,
                                  qk_norm=True, sandwich_norms=True, norm_offset=1.0,
                                  scale_embedding=True, query_pre_attn_scalar=256.0,
                                  sliding_window=512,
                                  layer_types=["sliding_attention" if (i + 1) % 6 else
                                               "full_attention" for i in range(18)],
                                  tie_word_embeddings=True, bos_token_id=2, eos_token_id=1),
}

#: the ternary models the engine runs (presets above): name -> the hub ids of that shape
MEMBERS = {
    "2b4t": ("microsoft/bitnet-b1.58-2B-4T", "microsoft/bitnet-b1.58-2B-4T-bf16"),
    "falcon3-1b": ("tiiuae/Falcon3-1B-Instruct-1.58bit",),
    "falcon3-3b": ("tiiuae/Falcon3-3B-Base-1.58bit", "tiiuae/Falcon3-3B-Instruct-1.58bit"),
    "falcon3-7b": ("tiiuae/Falcon3-7B-Base-1.58bit", "tiiuae/Falcon3-7B-Instruct-1.58bit"),
    "falcon3-10b": ("tiiuae/Falcon3-10B-Base-1.58bit", "tiiuae/Falcon3-10B-Instruct-1.58bit"),
    "llama3-8b-1.58": ("HF1BitLLM/Llama3-8B-1.58-100B-tokens",),
    "1bitllm-large": ("1bitLLM/bitnet_b1_58-large",),
    "1bitllm-3b": ("1bitLLM/bitnet_b1_58-3B",),
}
#: the ternary embedding models (no logits, no decoding: ``model.embed``), same form
EMBEDDING_MEMBERS = {
    "bitnet-embedding-0.6b": ("microsoft/bitnet-embedding-0.6b",),
    "bitnet-embedding-270m": ("microsoft/bitnet-embedding-270m",),
}

#: the FFN activations of the decoder block: relu2 (BitNet: relu(gate)**2 * up), silu (SwiGLU)
HIDDEN_ACTS = ("relu2", "silu")
#: ... and the one an embedding model's block may have too (Gemma3: GELU, tanh approximation)
EMBEDDING_ACTS = ("gelu_tanh",)
#: ``BitNetConfig.layer_types`` entries (Gemma3's attention kinds)
LAYER_TYPES = ("full_attention", "sliding_attention")
#: ``quantization_config.linear_class``: how the FILE's ``weight_scale`` reads.  autobitlinear
#: (2B4T): it multiplies (absmean); bitlinear (transformers' default for ``quant_method:
#: bitnet``; Falcon3, HF1BitLLM): it is the reciprocal 1/absmean.  The engine always holds the
#: absmean (the HF reader converts); this field says how a checkpoint of the model is written.
LINEAR_CLASSES = ("autobitlinear", "bitlinear")
#: ``architectures`` whose block has the two sub-norms (attn_sub_norm, ffn_sub_norm) ...
SUB_NORM_ARCHITECTURES = ("BitNetForCausalLM", "BitnetForCausalLM")
#: ... of them, 1bitLLM's (lower-case n, ``model_type: llama``, remote code the engine never
#: imports): float master weights only, the sub-norms named inner_attn_ln / ffn_layernorm on
#: disk (:func:`bitnet_edu.formats.schema.file_names`), SiLU when the config names no act
MASTER_ARCHITECTURES = ("BitnetForCausalLM",)
#: ... and those whose block is the plain Llama one (no sub-norms)
PLAIN_ARCHITECTURES = ("LlamaForCausalLM",)
_ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")

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
    hidden_act: str = "relu2"  # relu2 | silu (HIDDEN_ACTS)
    tie_word_embeddings: bool = True
    # None (default rope) or a llama3 scaling: {"rope_type": "llama3", "factor",
    # "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: dict | None = None
    # the block: attn_sub_norm + ffn_sub_norm (BitNetForCausalLM) or not (LlamaForCausalLM);
    # from_dict derives it from ``architectures``
    sub_norms: bool = True
    # the file's weight_scale semantics (LINEAR_CLASSES); from_dict reads quantization_config
    linear_class: str = "autobitlinear"
    # BitNet-embedding's block (docs/family.md, 2d): every projection normalizes its own input
    # (``<proj>.norm.weight``, "BitLinear with LN"), and q/k get a per-head RMSNorm (Qwen3's
    # ``q_norm``/``k_norm``); from_dict sets both for ``model_type: qwen3``
    projection_norms: bool = False
    qk_norm: bool = False
    # Gemma3's block (bitnet-embedding-270m; from_dict sets these for model_type gemma3_text):
    # norms after attention and after the FFN too (post_attention_layernorm then normalizes the
    # attention output, pre_feedforward_layernorm the FFN input, post_feedforward_layernorm its
    # output); RMSNorm weights stored as w with the norm multiplying by (1 + w) (norm_offset
    # 1.0; not the projections' own norms); the embedding times sqrt(hidden); attention
    # scores scaled by query_pre_attn_scalar**-0.5 (None: head_dim); sliding-window attention
    # (keys within the last ``sliding_window`` positions) on the layers ``layer_types`` marks
    # "sliding_attention", whose RoPE base is rope_local_theta
    sandwich_norms: bool = False
    norm_offset: float = 0.0
    scale_embedding: bool = False
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    layer_types: list | None = None
    rope_local_theta: float | None = None
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
        acts = HIDDEN_ACTS + (EMBEDDING_ACTS if self.projection_norms else ())
        if self.hidden_act not in acts:
            raise ValueError(f"hidden_act={self.hidden_act!r} not supported (one of "
                             f"{', '.join(acts)})")
        if self.linear_class not in LINEAR_CLASSES:
            raise ValueError(f"config linear_class={self.linear_class!r}: expected one of "
                             f"{', '.join(LINEAR_CLASSES)}")
        self.rope_scaling = _check_rope_scaling(self.rope_scaling)

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
        if not isinstance(self.sub_norms, bool):
            raise ValueError(f"config sub_norms={self.sub_norms!r}: expected true or false")
        for key in ("projection_norms", "qk_norm", "sandwich_norms", "scale_embedding"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"config {key}={getattr(self, key)!r}: expected true or false")
        self._check_gemma_fields()
        if self.projection_norms and self.sub_norms:
            raise ValueError("config projection_norms and sub_norms: a block whose projections "
                             "normalize their own inputs has no attn_sub_norm / ffn_sub_norm")
        if not isinstance(self.linear_class, str):
            raise ValueError(f"config linear_class={self.linear_class!r}: expected a string")
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

    def _check_gemma_fields(self) -> None:
        def number(v, low):
            return isinstance(v, (int, float, _np_floating(), _np_integer())) \
                and not isinstance(v, bool) and math.isfinite(v) and v >= low
        if self.norm_offset not in (0, 1) or isinstance(self.norm_offset, bool):
            raise ValueError(f"config norm_offset={self.norm_offset!r}: expected 0 (w) or 1 "
                             "(Gemma's 1 + w)")
        self.norm_offset = float(self.norm_offset)
        for key in ("query_pre_attn_scalar", "rope_local_theta"):
            v = getattr(self, key)
            if v is not None and not (number(v, 0) and v > 0):
                raise ValueError(f"config {key}={v!r}: expected a finite number > 0")
            if v is not None:
                setattr(self, key, float(v))
        w = self.sliding_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, _np_integer()))
                              or not 1 <= w <= MAX_POSITIONS):
            raise ValueError(f"config sliding_window={w!r}: expected a whole number in "
                             f"[1, {MAX_POSITIONS}] or null")
        kinds = self.layer_types
        if kinds is not None:
            if not isinstance(kinds, (list, tuple)) or len(kinds) != self.num_hidden_layers \
                    or any(k not in LAYER_TYPES for k in kinds):
                raise ValueError(f"config layer_types must list one of {LAYER_TYPES} per layer "
                                 f"({self.num_hidden_layers}), got {kinds!r:.200}")
            self.layer_types = list(kinds)
            if "sliding_attention" in kinds and w is None:
                raise ValueError("config layer_types has sliding_attention layers but no "
                                 "sliding_window")

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
        """Build from config.json keys.

        RoPE: a top-level ``rope_theta`` and ``rope_scaling`` (the hub files, transformers 4.x)
        or transformers-5's ``rope_parameters`` dict; rope types ``default`` and ``llama3``.
        ``sub_norms`` from ``architectures`` (:data:`SUB_NORM_ARCHITECTURES`: yes,
        :data:`PLAIN_ARCHITECTURES`: no, none or another name: yes) unless the key is given;
        ``linear_class`` from ``quantization_config`` (a ``quant_method: bitnet`` config without
        it means ``bitlinear``, as in transformers; no quantization config: ``autobitlinear``).
        1bitLLM's ``BitnetForCausalLM`` (:data:`MASTER_ARCHITECTURES`): sub-norms, ``hidden_act``
        silu unless given; a quantization config, bit widths other than ``weight_bits: 1`` /
        ``input_bits: 8`` or a projection bias are refused.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object (key: value), got "
                             f"{type(d).__name__}")
        d = dict(d)
        _check_backbone(d)
        if d.get("model_type") in ("gemma3_text", "gemma3"):
            _gemma3_keys(d)  # its per-layer-type RoPE first
        rope = d.pop("rope_parameters", None) or {}
        scaling = d.pop("rope_scaling", None)
        found = None
        for key, r in (("rope_parameters", rope), ("rope_scaling", scaling or {})):
            if not isinstance(r, dict):
                raise ValueError(f"config {key}={r!r}: expected an object")
            kind = r.get("rope_type", r.get("type", "default"))
            if kind not in _ROPE_TYPES:
                raise ValueError(f"rope type {kind!r} not supported (default or llama3)")
            if kind == "llama3":
                found = r
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        d["rope_scaling"] = None if found is None else \
            {"rope_type": "llama3", **{k: found.get(k) for k in _LLAMA3_KEYS}}
        if d.get("model_type") == "qwen3":  # BitNet-embedding-0.6B (docs/family.md, 2d)
            for k, v in (("sub_norms", False), ("projection_norms", True), ("qk_norm", True),
                         ("hidden_act", "silu")):
                d.setdefault(k, v)
            if d.get("bos_token_id") is not None and d.get("bos_token_id") == d.get("eos_token_id"):
                d["bos_token_id"] = None  # Qwen3 prepends nothing; its configs repeat the eos
        if is_master_layout(d.get("architectures")):
            _check_master_config(d)
            d.setdefault("hidden_act", "silu")  # its config class is LLaMA's: silu by default
        if "sub_norms" not in d:
            d["sub_norms"] = _sub_norms_of(d.get("architectures"))
        if "linear_class" not in d:
            d["linear_class"] = _linear_class_of(d.get("quantization_config"))
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
        """HF ``config.json`` keys (with top-level ``rope_theta`` and ``rope_scaling``, as the
        hub files); ``from_dict(to_dict())`` gives this config back.

        ``sub_norms`` and ``linear_class`` are written the way the hub files say them:
        ``architectures`` (``BitNetForCausalLM`` / ``LlamaForCausalLM``) and
        ``quantization_config.linear_class``; kept from ``extra`` when they already agree.
        Only ``BitNetConfig``'s own fields: a subclass's extra fields (training's
        ``quantized``) never reach a ``config.json``.
        """
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(BitNetConfig)
             if f.name not in ("extra", "sub_norms", "linear_class", "projection_norms",
                               "qk_norm") + _GEMMA_FIELDS}
        out = {**copy.deepcopy(self.extra), **d}  # copies, as dataclasses.asdict made
        if self.projection_norms:  # BitNet-embedding: its backbone's config, block flags kept
            gemma = self.sandwich_norms
            out.setdefault("architectures", ["Gemma3TextModel" if gemma else "Qwen3Model"])
            out["model_type"] = "gemma3_text" if gemma else "qwen3"
            out["sub_norms"], out["projection_norms"] = False, True
            out["qk_norm"] = self.qk_norm
            if gemma:
                out.update(sandwich_norms=True, norm_offset=self.norm_offset,
                           scale_embedding=self.scale_embedding,
                           query_pre_attn_scalar=self.query_pre_attn_scalar,
                           sliding_window=self.sliding_window, layer_types=self.layer_types,
                           rope_local_base_freq=self.rope_local_theta,
                           hidden_activation={"gelu_tanh": "gelu_pytorch_tanh"}.get(
                               self.hidden_act, self.hidden_act))
                out.pop("hidden_act", None)  # Gemma's config names it hidden_activation
        elif "architectures" not in out or _sub_norms_of(out["architectures"]) != self.sub_norms:
            out["architectures"] = ["BitNetForCausalLM" if self.sub_norms else "LlamaForCausalLM"]
            out["model_type"] = "bitnet" if self.sub_norms else "llama"
        out.setdefault("model_type", "bitnet" if self.sub_norms else "llama")
        if _linear_class_of(out.get("quantization_config")) != self.linear_class:
            qc = out.get("quantization_config")
            qc = dict(qc) if isinstance(qc, dict) and qc else {"quant_method": "bitnet"}
            qc["linear_class"] = self.linear_class
            out["quantization_config"] = qc
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
        # input_layernorm, post_attention_layernorm [h]; attn_sub_norm [q]; ffn_sub_norm [f]
        # (a block with sub-norms); the final norm [h]
        sub = shapes["o_proj"][1] + self.intermediate_size if self.sub_norms else 0
        if self.projection_norms:  # one per projection: the input width of each
            sub += sum(i for _, i in shapes.values())
        if self.qk_norm:
            sub += 2 * self.head_dim
        if self.sandwich_norms:
            sub += 2 * h  # pre_feedforward_layernorm, post_feedforward_layernorm
        counts["norms"] = n * (2 * h + sub) + h
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



#: backbones whose block the engine does not run, with what is missing (a clear refusal
#: instead of a model that loads and computes something else)
UNSUPPORTED_BACKBONES: dict = {}

#: Gemma3 defaults (transformers' Gemma3TextConfig) for keys a config.json may leave out
_GEMMA3 = dict(rope_theta=1000000.0, rope_local_base_freq=10000.0, query_pre_attn_scalar=256,
               sliding_window=4096, sliding_window_pattern=6, rms_norm_eps=1e-6,
               hidden_activation="gelu_pytorch_tanh")


def _gemma3_keys(d: dict) -> None:
    """A Gemma3 config.json (bitnet-embedding-270m) in BitNetConfig's terms, in place: the block
    flags, ``hidden_activation`` (gelu_pytorch_tanh -> gelu_tanh), the two RoPE bases (top-level
    ``rope_theta`` / ``rope_local_base_freq``, or transformers-5's ``rope_parameters`` keyed by
    layer type), ``layer_types`` (or every ``sliding_window_pattern``-th layer full).  Refused:
    bidirectional attention, logit soft-capping, a RoPE scaling."""
    for key in ("use_bidirectional_attention", "attn_logit_softcapping"):
        if d.get(key):
            raise ValueError(f"config {key}={d[key]!r}: not supported (causal attention without "
                             "soft-capping only)")
    rope = d.pop("rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
        for r in (full, local):
            if not isinstance(r, dict) or r.get("rope_type", "default") != "default":
                raise ValueError(f"config rope_parameters={rope!r:.200}: only default RoPE")
        d.setdefault("rope_theta", full.get("rope_theta", _GEMMA3["rope_theta"]))
        d.setdefault("rope_local_base_freq", local.get("rope_theta",
                                                       _GEMMA3["rope_local_base_freq"]))
    elif rope is not None:
        raise ValueError(f"config rope_parameters={rope!r:.200}: expected one per layer type")
    if d.get("rope_scaling") is not None:
        raise ValueError(f"config rope_scaling={d['rope_scaling']!r:.200}: only default RoPE")
    for k, v in _GEMMA3.items():
        d.setdefault(k, v)
    act = d.pop("hidden_activation")
    d.setdefault("hidden_act", {"gelu_pytorch_tanh": "gelu_tanh"}.get(act, act))
    n = d.get("num_hidden_layers")
    pattern = d.pop("sliding_window_pattern")
    if d.get("layer_types") is None and isinstance(n, int) and isinstance(pattern, int) \
            and pattern > 0:
        d["layer_types"] = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                            for i in range(n)]
    d["rope_local_theta"] = d.pop("rope_local_base_freq")
    for k, v in (("sub_norms", False), ("projection_norms", True), ("qk_norm", True),
                 ("sandwich_norms", True), ("norm_offset", 1.0), ("scale_embedding", True)):
        d.setdefault(k, v)


_GEMMA_FIELDS = ("sandwich_norms", "norm_offset", "scale_embedding", "query_pre_attn_scalar",
                 "sliding_window", "layer_types", "rope_local_theta")


def _check_backbone(d: dict) -> None:
    kind = d.get("model_type")
    why = UNSUPPORTED_BACKBONES.get(kind) if isinstance(kind, str) else None
    if why is not None:
        raise ValueError(f"config model_type={d.get('model_type')!r}: {why}")


def _sub_norms_of(architectures) -> bool:
    """Whether a config.json's ``architectures`` names a block with sub-norms (default yes)."""
    names = architectures if isinstance(architectures, (list, tuple)) else [architectures]
    if any(a in PLAIN_ARCHITECTURES for a in names) and \
            not any(a in SUB_NORM_ARCHITECTURES for a in names):
        return False
    return True


def is_master_layout(architectures) -> bool:
    """Whether a config.json's ``architectures`` names 1bitLLM's block
    (:data:`MASTER_ARCHITECTURES`)."""
    names = architectures if isinstance(architectures, (list, tuple)) else [architectures]
    return any(isinstance(a, str) and a in MASTER_ARCHITECTURES for a in names)


#: 1bitLLM's ``utils_quant.py`` quantizes weights to 1.58 bits and activations to 8 (its
#: config's ``weight_bits: 1``, ``input_bits: 8``); other values would need its remote code
_MASTER_BITS = {"weight_bits": 1, "input_bits": 8}


def _check_master_config(d: dict) -> None:
    """ValueError for a 1bitLLM config the engine would run differently from its remote code:
    a ``quantization_config`` (its files hold float masters, quantized on every forward), bit
    widths other than W1.58 A8, or projection biases."""
    if d.get("quantization_config"):
        raise ValueError(f"architectures {d.get('architectures')!r} (1bitLLM) with a "
                         f"quantization_config: its checkpoints hold float master weights and "
                         "carry none; a packed file of this block is written as "
                         "BitNetForCausalLM")
    for key, want in _MASTER_BITS.items():
        v = d.get(key, want)
        if isinstance(v, bool) or v != want:
            raise ValueError(f"config {key}={v!r}: only {key}={want} (1bitLLM's W1.58 A8, "
                             "utils_quant.py) is supported; other widths need its remote code, "
                             "which is never run")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key) not in (None, False):  # null: no bias, as LlamaConfig's default
            raise ValueError(f"config {key}={d[key]!r}: projections with a bias are not "
                             "supported (the ternary projections have none)")


def _linear_class_of(qc) -> str:
    """The weight_scale semantics a ``quantization_config`` gives (transformers' defaults)."""
    if not isinstance(qc, dict) or not qc:
        return "autobitlinear"  # no scales in the file (master) or the engine's own meaning
    lc = qc.get("linear_class", "bitlinear")
    return lc if isinstance(lc, str) else repr(lc)  # a non-string fails validation


def _check_rope_scaling(r):
    """None, or a llama3 scaling dict with valid numbers (ValueError naming the key)."""
    if r is None:
        return None
    if not isinstance(r, dict) or r.get("rope_type", r.get("type")) != "llama3":
        raise ValueError(f"config rope_scaling={r!r}: expected null or a llama3 scaling "
                         "{'rope_type': 'llama3', ...}")
    out = {"rope_type": "llama3"}
    for k in _LLAMA3_KEYS:
        v = r.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float, _np_floating(), _np_integer())) \
                or not math.isfinite(v) or v <= 0:
            raise ValueError(f"config rope_scaling.{k}={v!r}: expected a finite number > 0")
        out[k] = float(v)
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError(f"config rope_scaling: high_freq_factor={out['high_freq_factor']} must "
                         f"be > low_freq_factor={out['low_freq_factor']}")
    m = out["original_max_position_embeddings"]
    if m != int(m) or m > MAX_POSITIONS:
        raise ValueError(f"config rope_scaling.original_max_position_embeddings={m!r}: expected "
                         f"a whole number in [1, {MAX_POSITIONS}]")
    out["original_max_position_embeddings"] = int(m)
    return out
