"""How many bytes a BitNet model needs, counted from its config instead of quoted.

Count every tensor of the model by kind (embedding, the seven linears of each layer, the
norms), then price each kind in a storage format.  Only the linears are ternary in BitNet
b1.58: the embedding (tied with the output head) and the norms stay in bf16, which is why
a "2-billion-parameter model in 0.4 GB" needs about 1.18 GB on disk.

    >>> rows = memory_table()                      # the real 2B4T config
    >>> print(format_table(rows))
    >>> memory_figure(rows).show()

Sizes are in bytes; GB means 10**9 bytes (as file sizes are usually quoted).
"""

from __future__ import annotations

import math

from .config import LINEAR_KINDS, SHAPE_KEYS, BitNetConfig

__all__ = [
    "BITNET_2B4T",
    "held_columns",
    "LINEAR_KINDS",
    "BYTES_PER_WEIGHT",
    "param_counts",
    "count_summary",
    "memory_table",
    "predicted_safetensors_bytes",
    "format_table",
    "memory_figure",
    "GB",
    "HEAD_BYTES",
    "bytes_per_token",
]

GB = 10**9

#: The shape of microsoft/bitnet-b1.58-2B-4T (its config.json, see docs/formats.md): the
#: :data:`~bitnet_edu.config.SHAPE_KEYS` of the ``"2b4t"`` preset.
BITNET_2B4T = {k: getattr(BitNetConfig.preset("2b4t"), k) for k in SHAPE_KEYS}

#: Storage cost of one weight (bytes).  "log2(3)" is the information content, a lower bound.
BYTES_PER_WEIGHT = {
    "fp32": 4.0,
    "bf16": 2.0,
    "int8": 1.0,
    "ternary 2-bit": 0.25,  # HF packed and bitnet.cpp I2_S: 4 weights per byte
    "ternary base-3": 0.2,  # 5 weights per byte (3**5 = 243 <= 256)
    "ternary log2(3)": math.log2(3) / 8,  # 1.585 bits: no real packing reaches it exactly
}

_TERNARY = {"ternary 2-bit", "ternary base-3", "ternary log2(3)"}


def _config(config) -> BitNetConfig:
    """The model to count: a ``BitNetConfig`` or preset name as is (its block too: a Llama-layout
    member has no sub-norms), anything else by its shape (:meth:`BitNetConfig.from_shape`, the
    2B4T block); default: 2B4T."""
    if isinstance(config, BitNetConfig):
        return config
    if isinstance(config, str):
        return BitNetConfig.preset(config)
    return BitNetConfig.from_shape(BITNET_2B4T if config is None else config)


def param_counts(config=None) -> dict:
    """Number of parameters of each tensor kind, summed over all layers.

    Args:
        config: a :class:`~bitnet_edu.config.BitNetConfig`, or a dict / object with
            ``vocab_size, hidden_size, intermediate_size, num_hidden_layers,
            num_attention_heads`` (``num_key_value_heads``, ``head_dim`` and
            ``tie_word_embeddings`` optional).  Default: :data:`BITNET_2B4T`.

    Returns:
        dict kind -> int: ``embedding``, the seven :data:`LINEAR_KINDS`, ``norms`` (the four
        RMSNorm weights per layer plus the final norm) and ``lm_head`` (0 when tied).
    """
    c = _config(config).param_counts()
    return {k: c[k] for k in ("embedding", *LINEAR_KINDS, "norms", "lm_head")}


def count_summary(config=None) -> dict:
    """Totals: ``linear, embedding, norms, lm_head, total`` parameters, plus ``n_linear_tensors``,
    ``n_linear_rows`` and ``embedding_rows`` (what per-tensor / per-row scales are counted on)."""
    cfg = _config(config)
    c = cfg.param_counts()
    rows_per_layer = sum(out for out, _ in cfg.linear_shapes().values())
    return {
        "linear": c["linear"],
        "embedding": c["embedding"],
        "norms": c["norms"],
        "lm_head": c["lm_head"],
        "total": c["total"],
        "n_linear_tensors": c["scales"],  # one weight scale per linear tensor
        "n_linear_rows": cfg.num_hidden_layers * rows_per_layer,  # output rows
        "embedding_rows": cfg.vocab_size * (1 if cfg.tie_word_embeddings else 2),
    }


def _scale_bytes(fmt: str, s: dict) -> int:
    """Bytes of the quantization scales: one bf16 per ternary tensor (as in the HF file),
    one bf16 per output row for int8 (per-channel int8 needs it to stay accurate)."""
    if fmt in _TERNARY:
        return 2 * s["n_linear_tensors"]
    if fmt == "int8":
        return 2 * s["n_linear_rows"]
    return 0


def memory_table(config=None, formats=None, embedding: str = "bf16") -> list[dict]:
    """Bytes of the whole model, one row per storage format of the linear weights.

    Args:
        config: see :func:`param_counts`.
        formats: names from :data:`BYTES_PER_WEIGHT` (default: all of them).
        embedding: format of the embedding (and untied head) when the linears are quantized
            (``"bf16"`` as BitNet ships, or ``"int8"``).  With ``fp32``/``bf16`` linears the
            embedding uses the same float format.  Norms are bf16 (fp32 in the fp32 row).

    Returns:
        list of dicts with keys ``format, bits_per_weight, embedding_format, linear_bytes,
        embedding_bytes, other_bytes`` (norms + scales) ``, total_bytes, total_gb``.
    """
    if embedding not in ("bf16", "int8", "fp32"):
        raise ValueError(f"embedding must be 'bf16', 'int8' or 'fp32', got {embedding!r}")
    formats = list(BYTES_PER_WEIGHT) if formats is None else list(formats)
    s = count_summary(config)
    rows = []
    for fmt in formats:
        if fmt not in BYTES_PER_WEIGHT:
            raise ValueError(f"unknown format {fmt!r}; choose from {list(BYTES_PER_WEIGHT)}")
        float_model = fmt in ("fp32", "bf16")
        emb_fmt = fmt if float_model else embedding
        norm_fmt = "fp32" if fmt == "fp32" else "bf16"
        linear = s["linear"] * BYTES_PER_WEIGHT[fmt]
        emb = (s["embedding"] + s["lm_head"]) * BYTES_PER_WEIGHT[emb_fmt]
        if emb_fmt == "int8":  # plus one bf16 scale per vocabulary row
            emb += 2 * s["embedding_rows"]
        other = s["norms"] * BYTES_PER_WEIGHT[norm_fmt] + _scale_bytes(fmt, s)
        total = linear + emb + other
        rows.append({
            "format": fmt,
            "bits_per_weight": 8 * BYTES_PER_WEIGHT[fmt],
            "embedding_format": emb_fmt,
            "linear_bytes": int(math.ceil(linear)),
            "embedding_bytes": int(emb),
            "other_bytes": int(other),
            "total_bytes": int(math.ceil(total)),
            "total_gb": total / GB,
        })
    return rows


def predicted_safetensors_bytes(config=None, packed: bool = True) -> int:
    """Tensor bytes of the HF ``model.safetensors`` (the JSON header, a few tens of KB, excluded).

    ``packed=True``: the offline-quantized repo (uint8 2-bit linears, bf16 scales, bf16 rest);
    ``packed=False``: the ``-bf16`` master weights.
    """
    fmt = "ternary 2-bit" if packed else "bf16"
    return memory_table(config, [fmt], embedding="bf16")[0]["total_bytes"]


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of :func:`memory_table` rows (no pandas needed)."""
    head = f"{'linears in':<17}{'bits/w':>7}{'embedding':>11}{'linears GB':>12}{'embed GB':>10}{'other MB':>10}{'total GB':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['format']:<17}{r['bits_per_weight']:>7.2f}{r['embedding_format']:>11}"
                     f"{r['linear_bytes'] / GB:>12.3f}{r['embedding_bytes'] / GB:>10.3f}"
                     f"{r['other_bytes'] / 1e6:>10.2f}{r['total_gb']:>10.3f}")
    return "\n".join(lines)


def memory_figure(rows: list[dict], marks: dict | None = None, title: str = "Model memory per storage format"):
    """Stacked plotly bars (linears / embedding / norms+scales, in GB) for :func:`memory_table` rows.

    ``marks`` maps a label to a size in GB drawn as a dashed horizontal line (e.g. a quoted claim).
    """
    import plotly.graph_objects as go

    names = [f"{r['format']}<br>(emb {r['embedding_format']})" for r in rows]
    fig = go.Figure()
    for key, label, color in (("linear_bytes", "linears", "#1f77b4"),
                              ("embedding_bytes", "embedding", "#ff7f0e"),
                              ("other_bytes", "norms + scales", "#2ca02c")):
        fig.add_bar(x=names, y=[r[key] / GB for r in rows], name=label, marker_color=color)
    fig.add_scatter(x=names, y=[r["total_gb"] for r in rows], mode="text", showlegend=False,
                    text=[f"{r['total_gb']:.2f} GB" for r in rows], textposition="top center")
    for label, gb in (marks or {}).items():
        fig.add_hline(y=gb, line_dash="dash", line_color="gray", annotation_text=label,
                      annotation_position="top right")
    fig.update_layout(barmode="stack", title=title, yaxis_title="GB (10⁹ bytes)", height=420,
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig


#: Bytes per entry of the output head (and embedding) table in each storage: ``bf16`` as the HF
#: files and bitnet.cpp hold it; ``float32``, ``int8`` and ``int4`` as the engine can (its
#: ``head=`` option).  The quantized ones add float32 scales (:data:`HEAD_SCALE_GROUP`).
HEAD_BYTES = {"float32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
#: entries that share one float32 scale: a whole row for int8, 128 for int4 (the engine's)
HEAD_SCALE_GROUP = {"int8": None, "int4": 128}


#: the engine's head layout (:mod:`bitnet_edu.kernels.head`, QK and G4 there; a test keeps
#: them equal): an int8 row is zero-padded to whole blocks of 256 when that adds at most an
#: eighth, an int4 row always to whole groups of 128
HEAD_INT8_BLOCK, HEAD_INT4_GROUP = 256, 128


def held_columns(hidden: int, head: str) -> int:
    """Entries per row the engine holds (and reads) for a ``hidden``-wide table in ``head``
    storage: ``hidden`` itself, or padded as :data:`HEAD_INT8_BLOCK` / :data:`HEAD_INT4_GROUP`
    say (1bitLLM-3B's 3200 -> 3328 as int8)."""
    if head == "int8":
        pad = -hidden % HEAD_INT8_BLOCK
        return hidden + pad if pad and 8 * pad <= hidden else hidden
    if head == "int4":
        return hidden + (-hidden % HEAD_INT4_GROUP)
    return hidden


def bytes_per_token(config=None, head: str = "int8", bits_per_weight: float = 2.0,
                    norm_bytes: int = 4) -> dict:
    """Bytes of weights one decoded token reads, counted from the config (KV cache not counted:
    it grows with the context).  Decoding runs one GEMV per matrix, so every weight is read once:

    * ``linear``: the seven projections of every layer at ``bits_per_weight`` bits (2: the
      packed ternary layout of the HF files, bitnet.cpp's I2_S and this engine's kernels);
    * ``scales``: one float32 weight scale per projection (the engine's; 7 per layer);
    * ``norms``: every RMSNorm weight (two per layer, plus the sub-norms of a BitNet block, plus
      the final norm) at ``norm_bytes`` (float32 in the engine);
    * ``head``: the whole ``vocab x hidden`` output table in ``head`` storage (:data:`HEAD_BYTES`)
      with its scales: the logits need every row.  Tied or untied the same bytes; an untied
      model's embedding table is only looked up:
    * ``embedding_row``: the one row of the embedding the token looks up.

    An embedding model (``projection_norms``: BitNet-embedding) reads no head (``head`` 0): it
    pools hidden states instead of computing logits.

    Args:
        config: a :class:`~bitnet_edu.config.BitNetConfig`, a preset name (``"falcon3-1b"``), or
            anything :func:`param_counts` takes (a shape dict: the 2B4T block).
        head: ``"float32"``, ``"bf16"``, ``"int8"`` (default: the engine's choice for every
            family member, whose float table would exceed 256 MB) or ``"int4"``.

    Returns:
        dict of floats (bytes): ``linear, scales, norms, head, embedding_row, total``.
    """
    if head not in HEAD_BYTES:
        raise ValueError(f"head must be one of {', '.join(HEAD_BYTES)}, got {head!r}")
    if not (isinstance(bits_per_weight, (int, float)) and 0 < bits_per_weight <= 32):
        raise ValueError(f"bits_per_weight must be a number in (0, 32], got {bits_per_weight!r}")
    cfg = _config(config)
    c = cfg.param_counts()
    v, h = cfg.vocab_size, cfg.hidden_size
    group = HEAD_SCALE_GROUP.get(head)
    row_scales = 0 if head in ("float32", "bf16") else (1 if group is None else math.ceil(h / group))
    table = v * held_columns(h, head) * HEAD_BYTES[head] + v * row_scales * 4
    out = {
        "linear": c["linear"] * bits_per_weight / 8,
        "scales": 4.0 * len(LINEAR_KINDS) * cfg.num_hidden_layers,
        "norms": float(c["norms"] * norm_bytes),
        "head": float(table),
        "embedding_row": h * HEAD_BYTES[head] + row_scales * 4,
    }
    if cfg.projection_norms:  # an embedding model (BitNet-embedding) computes no logits
        out["head"] = 0.0
    out["total"] = sum(out.values())
    return out
