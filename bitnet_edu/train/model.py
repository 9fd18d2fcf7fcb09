"""A BitNet b1.58 transformer in torch, the 2B4T architecture scaled down, for training.

Per layer (names as in the HF checkpoint, so export is a renaming)::

    h   = x + o_proj( attn_sub_norm( attention( input_layernorm(x) ) ) )
    out = h + down_proj( ffn_sub_norm( relu(gate_proj(z))**2 * up_proj(z) ) ),  z = post_attention_layernorm(h)

then ``norm`` and logits ``= normed @ embed_tokens.T`` (tied embeddings).  Attention uses rotary
position embeddings (NeoX "rotate half", ``emb = cat(freqs, freqs)``) and grouped-query attention.
No biases anywhere.  The shape is a :class:`~bitnet_edu.config.BitNetConfig` (HF field names):
:class:`ModelConfig` is that type plus the ``quantized`` switch and the old short names.

The seven projections of each layer are :class:`~bitnet_edu.bitlinear.BitLinear` (QAT: ternary
weights and int8 activations in the forward, straight-through gradients) or, with
``quantized=False``, plain ``nn.Linear`` (the full-precision baseline that PTQ starts from).
The sub-norms are separate :class:`RMSNorm` modules rather than ``BitLinear(rms_norm=True)`` so
the float model has them too and ``replace_linears`` turns it into exactly the QAT architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..bitlinear import BitLinear, RMSNorm
from ..config import BitNetConfig
from ..quant import absmean_ternary

__all__ = ["ModelConfig", "OLD_NAMES", "BitNetLM", "rope_cos_sin", "apply_rope", "ternary_codes",
           "zero_fraction"]

#: ModelConfig's short names (training's spelling before the one config type) -> BitNetConfig field.
#: ``vocab_size`` and ``rope_theta`` are spelled the same in both.
OLD_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers",
             "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
             "ffn_dim": "intermediate_size", "max_seq_len": "max_position_embeddings",
             "eps": "rms_norm_eps"}
_POSITIONAL = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len",
               "rope_theta", "eps", "quantized")  # the old dataclass's field order
# the old ModelConfig defaults; bos/eos are unknown until a tokenizer exists (export sets them)
_DEFAULTS = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=2, intermediate_size=704, max_position_embeddings=256,
                 rope_theta=10000.0,  # 2B4T uses 5e5 for 4096 positions; 1e4 suits 256
                 bos_token_id=None, eos_token_id=None)


def _alias(field_name: str) -> property:
    return property(lambda self: getattr(self, field_name), doc=f"``{field_name}`` (old name)")


@dataclass(init=False)
class ModelConfig(BitNetConfig):
    """A :class:`~bitnet_edu.config.BitNetConfig` for training, plus ``quantized``.

    ``quantized``: the projections are BitLinear (QAT) or ``nn.Linear`` (full precision).
    Accepts the old keyword names as well as the HF ones (mapping in :data:`OLD_NAMES`; an old
    name wins over its HF name, so ``dataclasses.replace(cfg, dim=128)`` works) and keeps the old
    defaults (a 6-layer, 256-wide model).  The old names stay readable (``cfg.dim``, ...).
    ``to_dict()`` gives the HF ``config.json`` keys only.
    """

    quantized: bool = True

    def __init__(self, *args, **kwargs):
        if len(args) > len(_POSITIONAL):
            raise TypeError(f"ModelConfig takes at most {len(_POSITIONAL)} positional arguments")
        for name, value in zip(_POSITIONAL, args):
            if name in kwargs:
                raise TypeError(f"ModelConfig got multiple values for {name!r}")
            kwargs[name] = value
        quantized = kwargs.pop("quantized", True)
        if "dim" in kwargs or "n_heads" in kwargs:
            kwargs.pop("head_dim", None)  # the old names mean head_dim = dim // n_heads
        for old, new in OLD_NAMES.items():
            if old in kwargs:
                kwargs[new] = kwargs.pop(old)
        kw = {**_DEFAULTS, **kwargs}
        if kw.get("head_dim") is None and kw["hidden_size"] % kw["num_attention_heads"]:
            raise ValueError(f"dim={kw['hidden_size']} must divide by "
                             f"n_heads={kw['num_attention_heads']}")
        super().__init__(**kw)
        self.quantized = bool(quantized)

    dim = _alias("hidden_size")
    n_layers = _alias("num_hidden_layers")
    n_heads = _alias("num_attention_heads")
    n_kv_heads = _alias("num_key_value_heads")
    ffn_dim = _alias("intermediate_size")
    max_seq_len = _alias("max_position_embeddings")
    eps = _alias("rms_norm_eps")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From HF ``config.json`` keys or the old names (an older ``training.json``'s
        ``model_config``)."""
        return super().from_dict({OLD_NAMES.get(k, k): v for k, v in d.items()})

    @classmethod
    def from_config(cls, cfg: BitNetConfig, quantized: bool = True) -> "ModelConfig":
        """Every ``BitNetConfig`` field of ``cfg``, plus ``quantized``."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(BitNetConfig)},
                   quantized=quantized)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, start: int = 0):
    """cos, sin float32 ``[seq_len, head_dim]`` for positions ``start..start+seq_len-1``."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    pos = torch.arange(start, start + seq_len, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)  # NeoX layout: first half pairs with second half
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """Rotate ``x [B, H, T, head_dim]`` by position: ``x*cos + rotate_half(x)*sin``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _linear(cfg: ModelConfig, n_in: int, n_out: int) -> nn.Module:
    if cfg.quantized:
        return BitLinear(n_in, n_out, eps=cfg.rms_norm_eps)
    return nn.Linear(n_in, n_out, bias=False)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, self.hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = _linear(cfg, h, self.n_heads * self.hd)
        self.k_proj = _linear(cfg, h, self.n_kv * self.hd)
        self.v_proj = _linear(cfg, h, self.n_kv * self.hd)
        self.attn_sub_norm = RMSNorm(self.n_heads * self.hd, cfg.rms_norm_eps)
        self.o_proj = _linear(cfg, self.n_heads * self.hd, h)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # GQA: each key/value head serves n_heads / n_kv query heads
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(self.attn_sub_norm(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _linear(cfg, h, f)
        self.up_proj = _linear(cfg, h, f)
        self.ffn_sub_norm = RMSNorm(f, cfg.rms_norm_eps)
        self.down_proj = _linear(cfg, f, h)

    def forward(self, x):
        return self.down_proj(self.ffn_sub_norm(F.relu(self.gate_proj(x)).square() * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class BitNetLM(nn.Module):
    """Token ids ``[B, T]`` int64 -> logits ``[B, T, vocab]`` float32 (and the loss with targets).

    Args:
        cfg: the shape, a :class:`~bitnet_edu.config.BitNetConfig` (e.g. a recipe's
            :class:`ModelConfig`, or ``BitNetConfig.preset(...)``); embeddings must be tied.
        quantized: BitLinear projections (QAT) or ``nn.Linear`` (full precision); default
            ``cfg.quantized`` for a ModelConfig, else True.

    ``self.cfg`` is ``cfg`` itself when it is a ModelConfig with that ``quantized``, otherwise a
    ModelConfig with the same BitNetConfig fields (so ``cfg.quantized`` always tells the truth).
    """

    def __init__(self, cfg: BitNetConfig, *, quantized: bool | None = None):
        super().__init__()
        if quantized is None:
            quantized = getattr(cfg, "quantized", True)
        if not (isinstance(cfg, ModelConfig) and cfg.quantized == bool(quantized)):
            cfg = ModelConfig.from_config(cfg, quantized=bool(quantized))
        if not cfg.tie_word_embeddings:
            raise ValueError("BitNetLM ties the output head to the embedding "
                             "(tie_word_embeddings=False is not supported)")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        n = self.cfg.max_position_embeddings
        if T > n:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len "
                             f"(max_position_embeddings) = {n}")
        cos, sin = rope_cos_sin(T, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.norm(x) @ self.embed_tokens.weight.T  # tied: no separate lm_head
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def num_params(self) -> int:
        """Parameters (the tied embedding once): ``cfg.n_params``, what the tensors hold."""
        return self.cfg.n_params

    def bitlinears(self):
        """``(name, BitLinear)`` pairs, in state-dict order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BitLinear)]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 40,
                 generator=None):
        """Sample ``max_new_tokens`` after ``idx [1, T]``; returns ``[1, T + max_new_tokens]``.

        No KV cache: the window is recomputed each step (fine for a few M parameters).
        """
        for _ in range(max_new_tokens):
            window = idx[:, -self.cfg.max_position_embeddings:]
            logits = self(window)[:, -1] / max(temperature, 1e-6)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def ternary_codes(model) -> np.ndarray:
    """Every BitLinear weight rounded to {-1, 0, +1} (each with its own absmean), int8, flat."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    if not layers:
        return np.zeros(0, np.int8)
    return np.concatenate([absmean_ternary(m.weight.detach().float().numpy(), m.eps)[0].ravel()
                           for m in layers])


def zero_fraction(model) -> float:
    """Fraction of ternary weights that are 0 (NaN for a float model, which has none)."""
    q = ternary_codes(model)
    return float(np.mean(q == 0)) if q.size else float("nan")
