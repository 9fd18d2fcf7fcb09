"""A BitNet b1.58 transformer in torch, the 2B4T architecture scaled down, for training.

Per layer (names as in the HF checkpoint, so export is a renaming)::

    h   = x + o_proj( attn_sub_norm( attention( input_layernorm(x) ) ) )
    out = h + down_proj( ffn_sub_norm( relu(gate_proj(z))**2 * up_proj(z) ) ),  z = post_attention_layernorm(h)

then ``norm`` and logits ``= normed @ embed_tokens.T`` (tied embeddings).  Attention uses rotary
position embeddings (NeoX "rotate half", ``emb = cat(freqs, freqs)``) and grouped-query attention.
No biases anywhere.

The seven projections of each layer are :class:`~bitnet_edu.bitlinear.BitLinear` (QAT: ternary
weights and int8 activations in the forward, straight-through gradients) or, with
``quantized=False``, plain ``nn.Linear`` (the full-precision baseline that PTQ starts from).
The sub-norms are separate :class:`RMSNorm` modules rather than ``BitLinear(rms_norm=True)`` so
the float model has them too and ``replace_linears`` turns it into exactly the QAT architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..bitlinear import BitLinear, RMSNorm

__all__ = ["ModelConfig", "BitNetLM", "rope_cos_sin", "apply_rope"]


@dataclass
class ModelConfig:
    """Shape of the model; ``to_hf()`` gives the matching HF ``config.json`` keys."""

    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int = 2
    ffn_dim: int = 704
    max_seq_len: int = 256
    rope_theta: float = 10000.0  # 2B4T uses 5e5 for 4096 positions; 1e4 suits 256
    eps: float = 1e-5
    quantized: bool = True  # BitLinear (QAT) or nn.Linear (full precision)

    def __post_init__(self):
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim={self.dim} must divide by n_heads={self.n_heads}, "
                             f"which must divide by n_kv_heads={self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head_dim={self.dim // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


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
    return BitLinear(n_in, n_out, eps=cfg.eps) if cfg.quantized else nn.Linear(n_in, n_out, bias=False)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = _linear(cfg, cfg.dim, cfg.n_heads * self.hd)
        self.k_proj = _linear(cfg, cfg.dim, cfg.n_kv_heads * self.hd)
        self.v_proj = _linear(cfg, cfg.dim, cfg.n_kv_heads * self.hd)
        self.attn_sub_norm = RMSNorm(cfg.dim, cfg.eps)
        self.o_proj = _linear(cfg, cfg.dim, cfg.dim)

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
        self.gate_proj = _linear(cfg, cfg.dim, cfg.ffn_dim)
        self.up_proj = _linear(cfg, cfg.dim, cfg.ffn_dim)
        self.ffn_sub_norm = RMSNorm(cfg.ffn_dim, cfg.eps)
        self.down_proj = _linear(cfg, cfg.ffn_dim, cfg.dim)

    def forward(self, x):
        return self.down_proj(self.ffn_sub_norm(F.relu(self.gate_proj(x)).square() * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class BitNetLM(nn.Module):
    """Token ids ``[B, T]`` int64 -> logits ``[B, T, vocab]`` float32 (and the loss if targets given)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        cos, sin = rope_cos_sin(T, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.norm(x) @ self.embed_tokens.weight.T  # tied: no separate lm_head
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

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
            logits = self(idx[:, -self.cfg.max_seq_len:])[:, -1] / max(temperature, 1e-6)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
