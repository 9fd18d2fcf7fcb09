"""Bytes and energy per generated token for fp16, int8 and ternary weights: a back-of-envelope model.

Decoding one token reads every weight once (a matrix-vector product per layer), so the cost of
a token is ``weights read from DRAM x energy per byte`` plus ``multiply-adds x energy per op``.
The per-operation energies are the 45 nm, 0.9 V figures of

    M. Horowitz, "Computing's energy problem (and what we can do about it)",
    IEEE ISSCC 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323

as they are reproduced in many later papers and energy models (e.g. the 45 nm tables in
Stillwater's ``esim``/``universal`` energy databases, and Table 3 of a 2022 Frontiers paper,
PMC8934428, for the fp32/int32 rows): int8 add 0.03 pJ, int8 mult 0.2 pJ, int16 add 0.05 pJ,
int32 add 0.1 pJ, int32 mult 3.1 pJ, fp16 add 0.4 pJ, fp16 mult 1.1 pJ, fp32 add 0.9 pJ,
fp32 mult 3.7 pJ; one 64-bit DRAM access 1.3-2.6 nJ (an 8 KB SRAM access: 10 pJ).

Accounting (the BitNet b1.58 paper's, kept deliberately simple):
  * fp16 weights: one fp16 mult + one fp16 add per weight; 16 bits read per weight.
  * int8 (W8A8): one int8 mult + one int8 add per weight; 8 bits per weight.
  * ternary: one int8 add per weight (x or -x, no multiply); 2 bits per weight, the I2_S
    layout the CPU kernels read (log2(3) = 1.58 bits is the floor a base-3 layout approaches).
  Real kernels accumulate in int16/int32 (0.05/0.1 pJ); that moves the arithmetic ratio but not
  the conclusion, because DRAM traffic is ~100x larger than arithmetic at every precision.
  The output head (the tied embedding, ``vocab x hidden``) stays at ``head_bits`` (fp16 in
  bitnet.cpp's I2_S files), the KV cache at ``kv_bits``; attention is counted as fp16 MACs.

The published "55-82 % energy reduction" is bitnet.cpp's *measured* whole-CPU energy
against llama.cpp fp16 (arXiv:2410.16144: 55.4-70.0 % on ARM, 71.9-82.2 % on x86).
:func:`claim_comparison` puts the table's answers beside it, for 2B4T at short context:
arithmetic only 85 % (98 % for the linear layers alone: 0.03 pJ vs 1.5 pJ per weight; the fp16
head's multiply-adds are what remain), total with an fp16 head 76 % (inside the range: memory
traffic is >99 % of the total at every precision), total with a ternary head too 87 %.  The measured range sits below the pure-traffic figure because a real CPU also
pays static power, activations, caches and the parts of the model that stay in high precision.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PRESETS, BitNetConfig

__all__ = ["ENERGY_PJ", "DRAM_PJ_PER_64BIT", "SEED_CLAIM", "FORMATS", "SHAPES", "Format", "Shape",
           "TokenCost", "token_cost", "kv_cache_bytes", "reduction", "claim_comparison"]

#: picojoules per operation, 45 nm (Horowitz, ISSCC 2014).
ENERGY_PJ = {
    "int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1,
    "int8_mult": 0.2, "int32_mult": 3.1,
    "fp16_add": 0.4, "fp16_mult": 1.1,
    "fp32_add": 0.9, "fp32_mult": 3.7,
}
#: picojoules per 64-bit DRAM access, the table's low and high ends.
DRAM_PJ_PER_64BIT = {"low": 1300.0, "high": 2600.0}
#: bitnet.cpp's measured energy reduction vs llama.cpp fp16 (ARM low end, x86 high end).
SEED_CLAIM = (0.554, 0.822)


@dataclass(frozen=True)
class Format:
    """How one weight format is stored and what one weight costs in arithmetic per token."""

    name: str
    weight_bits: float
    ops: tuple[str, ...]  # operations per weight per token, keys of ENERGY_PJ

    @property
    def op_pj(self) -> float:
        return sum(ENERGY_PJ[o] for o in self.ops)


FORMATS = {
    "fp16": Format("fp16", 16, ("fp16_mult", "fp16_add")),
    "int8": Format("int8", 8, ("int8_mult", "int8_add")),
    "ternary": Format("ternary", 2, ("int8_add",)),
}


class Shape:
    """The old name of the shape type: calling it builds a :class:`~bitnet_edu.config.BitNetConfig`.

    ``Shape(hidden, intermediate, layers, heads, kv_heads, head_dim, vocab)`` (the old fields,
    in order) gives a BitNetConfig with those sizes; the costs below read ``linear_params``,
    ``head_params`` and ``kv_values_per_position`` from it.
    """

    def __new__(cls, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                head_dim: int, vocab: int) -> BitNetConfig:
        return BitNetConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=kv_heads, head_dim=head_dim)

    @staticmethod
    def from_config(cfg) -> BitNetConfig:
        """The shape of a :class:`~bitnet_edu.config.BitNetConfig`, a ``config.json`` dict or any
        object with those attribute names (:meth:`BitNetConfig.from_shape`)."""
        return BitNetConfig.from_shape(cfg)


#: The shapes the lessons compare, from :data:`bitnet_edu.config.PRESETS` (sizes only).
SHAPES = {label: BitNetConfig.from_shape(PRESETS[name]) for label, name in (
    ("BitNet b1.58 2B4T", "2b4t"), ("LLaMA-2 7B shape", "llama2-7b"),
    ("LLaMA-2 13B shape", "llama2-13b"), ("LLaMA-2 70B shape", "llama2-70b"))}


@dataclass(frozen=True)
class TokenCost:
    """Bytes read and energy spent to decode one token (float fields, pJ and bytes)."""

    format: str
    weight_bytes: float
    kv_bytes: float
    memory_pj: float
    compute_pj: float

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def total_pj(self) -> float:
        return self.memory_pj + self.compute_pj

    @property
    def total_mj(self) -> float:
        """Millijoules per token."""
        return self.total_pj * 1e-9


def kv_cache_bytes(shape: BitNetConfig, context: int, bits: float = 16) -> float:
    """Bytes of the KV cache holding ``context`` tokens: 2 · layers · kv_heads · head_dim · context."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    return shape.kv_values_per_position * context * bits / 8


def _dram_pj_per_byte(dram) -> float:
    if isinstance(dram, str):
        if dram not in DRAM_PJ_PER_64BIT:
            raise ValueError(f"dram must be one of {list(DRAM_PJ_PER_64BIT)} or pJ per byte, got {dram!r}")
        return DRAM_PJ_PER_64BIT[dram] / 8
    return float(dram)


def token_cost(shape: BitNetConfig, fmt: str = "ternary", *, context: int = 0,
               head_bits: float = 16, kv_bits: float = 16, dram="low") -> TokenCost:
    """Cost of decoding one token with ``context`` tokens already in the KV cache.

    ``fmt`` is a key of :data:`FORMATS` (the linear layers' format); the fp16 baseline keeps its
    head in fp16 whatever ``head_bits`` says. ``dram`` is ``"low"``, ``"high"`` or pJ per byte.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    f, head_bits = FORMATS[fmt], (16 if fmt == "fp16" else head_bits)
    weight_bytes = shape.linear_params * f.weight_bits / 8 + shape.head_params * head_bits / 8
    kv_bytes = kv_cache_bytes(shape, context, kv_bits)
    fp16_mac = ENERGY_PJ["fp16_mult"] + ENERGY_PJ["fp16_add"]
    head_mac = fp16_mac if head_bits > 8 else FORMATS["int8"].op_pj
    # q·k and p·v, fp16 MACs: per query head, head dimension, cached position and layer
    attn_macs = 2 * shape.num_attention_heads * shape.head_dim * context * shape.num_hidden_layers
    compute = shape.linear_params * f.op_pj + shape.head_params * head_mac + attn_macs * fp16_mac
    memory = (weight_bytes + kv_bytes) * _dram_pj_per_byte(dram)
    return TokenCost(fmt, weight_bytes, kv_bytes, memory, compute)


def reduction(base: float, new: float) -> float:
    """Fractional saving of ``new`` against ``base`` (0.75 means 75 % less)."""
    return 1.0 - new / base


def claim_comparison(shape: BitNetConfig, *, context: int = 0, head_bits: float = 16,
                     dram="low") -> dict:
    """Ternary-vs-fp16 energy reduction three ways, beside bitnet.cpp's measured 55-82 % (arXiv 2410.16144).

    Returns ``{"arithmetic only": r, "weights + KV traffic": r, "total": r,
    "total, ternary head too": r}`` (fractions) for the given shape and settings.
    """
    kw = dict(context=context, dram=dram)
    fp, tern = token_cost(shape, "fp16", **kw), token_cost(shape, "ternary", head_bits=head_bits, **kw)
    all_tern = token_cost(shape, "ternary", head_bits=2, **kw)
    return {
        "arithmetic only": reduction(fp.compute_pj, tern.compute_pj),
        "weights + KV traffic": reduction(fp.memory_pj, tern.memory_pj),
        "total": reduction(fp.total_pj, tern.total_pj),
        "total, ternary head too": reduction(fp.total_pj, all_tern.total_pj),
    }


def verdict(r: float, claim=SEED_CLAIM) -> str:
    """``'inside'``, ``'above'`` or ``'below'`` the claimed range."""
    lo, hi = claim
    return "inside" if lo <= r <= hi else ("above" if r > hi else "below")


if __name__ == "__main__":  # python -m bitnet_edu.energy: the table for 2B4T
    s = SHAPES["BitNet b1.58 2B4T"]
    for name in FORMATS:
        c = token_cost(s, name)
        print(f"{name:8s} {c.bytes / 1e9:6.2f} GB/token  {c.total_mj:7.1f} mJ/token "
              f"(memory {c.memory_pj / c.total_pj:.1%})")
    for k, r in claim_comparison(s).items():
        print(f"{k:26s} {r:6.1%}  {verdict(r)} bitnet.cpp's measured 55-82 % (arXiv 2410.16144)")
