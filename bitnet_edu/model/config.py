"""The model's shape and constants, read from an HF ``config.json`` (or GGUF metadata)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["BitNetConfig", "PRESETS"]


@dataclass
class BitNetConfig:
    """Shape of a BitNet b1.58 transformer; field names follow the HF ``config.json``."""

    vocab_size: int = 128256
    hidden_size: int = 2560
    intermediate_size: int = 6912
    num_hidden_layers: int = 30
    num_attention_heads: int = 20
    num_key_value_heads: int = 5
    head_dim: int | None = None  # default hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    hidden_act: str = "relu2"
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 128000
    eos_token_id: int | list | None = 128001
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, kept for export

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.hidden_act != "relu2":
            raise ValueError(f"hidden_act={self.hidden_act!r} not supported (BitNet uses 'relu2')")

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [int(x) for x in (e if isinstance(e, (list, tuple)) else [e])]

    @classmethod
    def from_dict(cls, d: dict) -> "BitNetConfig":
        """Build from config.json keys; accepts a top-level ``rope_theta`` (the real 2B4T file) or
        transformers-5's ``rope_parameters`` dict (only the default rope type is supported)."""
        d = dict(d)
        rope = d.pop("rope_parameters", None) or {}
        scaling = d.pop("rope_scaling", None)
        for r in (rope, scaling or {}):
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

    def to_dict(self) -> dict:
        """HF ``config.json`` keys (with top-level ``rope_theta``, as the real 2B4T file)."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        out = {**self.extra, **d}
        out.setdefault("architectures", ["BitNetForCausalLM"])
        out.setdefault("model_type", "bitnet")
        return out


PRESETS = {
    "2b4t": dict(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                 num_attention_heads=20, num_key_value_heads=5, max_position_embeddings=4096,
                 eos_token_id=[128001, 128009]),
}
