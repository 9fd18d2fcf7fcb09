"""The decode roofline: tokens/s <= memory bandwidth / bytes read per token.

Decoding one token reads every weight once (a GEMV per linear, the output head over the whole
vocabulary), and does about 2 operations per weight.  If the CPU could do those operations for
free, the time per token would be the bytes divided by the memory bandwidth, so

    tok/s  <=  bandwidth / bytes_per_token

is a ceiling no kernel can beat.  A kernel that reaches a good fraction of it is *memory-bound*
(fewer bits per weight would make it faster); one far below it is *compute-bound* (it spends its
time decoding and adding, and fewer bits buy nothing until the arithmetic gets faster).

    >>> b = bytes_per_token()                      # 2B4T, 2-bit linears, bf16 head
    >>> tok_s_ceiling(20.0, b["total"])            # at 20 GB/s
    >>> rows = kernel_rows(race)                   # race = bitnet_edu.bench.kernels.run(...)
"""

from __future__ import annotations

from ..config import BitNetConfig

__all__ = ["bytes_per_token", "tok_s_ceiling", "kernel_rows", "format_rows", "roofline_figure",
           "MEMORY_BOUND_FRACTION"]

#: a kernel streaming its weights at this fraction of the measured bandwidth or more is memory-bound
MEMORY_BOUND_FRACTION = 0.5


def _cfg(config) -> BitNetConfig:
    if config is None:
        return BitNetConfig.preset("2b4t")
    return config if isinstance(config, BitNetConfig) else BitNetConfig.from_shape(config)


def bytes_per_token(config=None, bits_per_weight: float = 2.0, head_bytes_per_weight: float = 2.0
                    ) -> dict:
    """Bytes read from memory to decode one token (weights only; the KV cache of a short
    context is small beside them).

    * ``linear``: all q/k/v/o/gate/up/down weights at ``bits_per_weight`` **bits** (/ 8 bytes);
    * ``head``: the output head, ``vocab x hidden`` at ``head_bytes_per_weight`` bytes (bf16 in
      2B4T; tied to the embedding, but the head reads all of it for every token);
    * ``embedding``: the one embedding row the token looks up (negligible).
    """
    c = _cfg(config)
    linear = c.linear_params * bits_per_weight / 8
    head = c.head_params * head_bytes_per_weight
    emb = c.hidden_size * head_bytes_per_weight
    return {"linear": linear, "head": head, "embedding": emb, "total": linear + head + emb}


def tok_s_ceiling(bandwidth_gbs: float, n_bytes: float) -> float:
    """The roofline: tokens per second if every byte streams at ``bandwidth_gbs`` (GB = 1e9 B)."""
    return bandwidth_gbs * 1e9 / n_bytes


def kernel_rows(race: dict, config=None, threads: int | None = None,
                bandwidth_gbs: float | None = None) -> list[dict]:
    """Per kernel at T = 1 (decode): the roofline of the *linears* at its own bits per weight,
    the tok/s its measured GEMV speed would give on them, and the fraction of the roofline.

    The GEMV was timed on one shape of the race; its time per weight is scaled to all the
    linear weights of ``config`` (default 2B4T).  ``bound`` is "memory" when the kernel streams
    its weights at >= :data:`MEMORY_BOUND_FRACTION` of the bandwidth (``bandwidth_gbs``, default:
    the one the race measured with that thread count), else "compute".  ``threads=None``: the thread count whose GEMVs were fastest in the run.  Times: the median, with the min-max range as ``tok_s_lo`` / ``tok_s_hi``.
    """
    c = _cfg(config)
    if threads is None:  # the thread count that decoded fastest in this run (on a busy machine: 1)
        tot = {th: sum(r["ms"] for r in race["rows"] if r["T"] == 1 and r["threads"] == th)
               for th in race["threads"]}
        threads = min((th for th in tot if tot[th] > 0), key=tot.get, default=max(race["threads"]))
    bw = bandwidth_gbs or race["bandwidth_gbs"][str(threads)]
    out = []
    rows = [r for r in race["rows"] if r["T"] == 1 and r["threads"] == threads]
    shape = max({(r["out"], r["in"]) for r in rows}, key=lambda s: s[0] * s[1]) if rows else None
    for r in rows:
        if (r["out"], r["in"]) != shape:
            continue
        per_w = 1e-3 / (r["out"] * r["in"])  # seconds per weight for 1 ms
        linear_bytes = c.linear_params * r["bits_per_weight"] / 8
        ceiling = tok_s_ceiling(bw, linear_bytes)
        tok_s = 1 / (c.linear_params * r["ms"] * per_w)
        frac = r["weight_gbs"] / bw
        out.append({"kernel": r["kernel"], "bits_per_weight": r["bits_per_weight"],
                    "shape": shape, "threads": threads, "bandwidth_gbs": bw,
                    "ceiling_tok_s": ceiling, "tok_s": tok_s,
                    "tok_s_lo": 1 / (c.linear_params * r.get("ms_max", r["ms"]) * per_w),
                    "tok_s_hi": 1 / (c.linear_params * r.get("ms_min", r["ms"]) * per_w),
                    "fraction": frac,
                    "bound": "memory" if frac >= MEMORY_BOUND_FRACTION else "compute"})
    return out


def format_rows(rows: list[dict]) -> str:
    if not rows:
        return "(no T = 1 rows in this race)"
    r0 = rows[0]
    lines = [f"linears of 2B4T-size decode, from the {r0['shape'][0]}x{r0['shape'][1]} GEMV, "
             f"{r0['threads']} thread(s), bandwidth {r0['bandwidth_gbs']:.1f} GB/s",
             f"{'kernel':>7} {'bits/w':>6} {'ceiling tok/s':>13} {'measured tok/s':>14} "
             f"{'of ceiling':>10}  bound"]
    for r in rows:
        lines.append(f"{r['kernel']:>7} {r['bits_per_weight']:6.2f} {r['ceiling_tok_s']:13.1f} "
                     f"{r['tok_s']:14.2f} {r['fraction']:10.0%}  {r['bound']}")
    return "\n".join(lines)


def roofline_figure(rows: list[dict], title: str | None = None):
    """Grouped bars: the roofline ceiling and the measured tok/s (min-max error bars) per kernel."""
    import plotly.graph_objects as go

    names = [r["kernel"] for r in rows]
    fig = go.Figure()
    fig.add_bar(name="ceiling: bandwidth / bytes", x=names, y=[r["ceiling_tok_s"] for r in rows],
                marker_color="#c8c8c8")
    fig.add_bar(name="measured (median, min-max)", x=names, y=[r["tok_s"] for r in rows],
                marker_color=["#636efa" if r["bound"] == "memory" else "#ef553b" for r in rows],
                error_y=dict(type="data", symmetric=False,
                             array=[r["tok_s_hi"] - r["tok_s"] for r in rows],
                             arrayminus=[r["tok_s"] - r["tok_s_lo"] for r in rows]),
                text=[r["bound"] + "-bound" for r in rows], textposition="outside")
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="tokens / s (linears only)",
                      title=title or "decode roofline: ceiling vs measured (red = compute-bound)",
                      height=380)
    return fig
