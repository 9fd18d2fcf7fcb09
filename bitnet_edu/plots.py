"""Plotly figures the stage 1–2 notebooks (and widgets) share.

Each ``*_figure`` function returns a ``plotly.graph_objects.Figure``; call ``.show()`` in a
notebook or wrap it in :class:`FigureWidget` (not ``go.FigureWidget``: see there) to update
it from a widget.  Data helpers (no plotting) sit next to the figure that uses them so the
numbers can be printed and tested.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .memory import memory_figure as memory_per_format  # noqa: F401  (re-exported for notebooks)
from .quant import absmean_ternary_grouped, fake_quant_ternary, mse, sqnr_db

__all__ = [
    "FigureWidget",
    "histogram_before_after",
    "hist_data",
    "granularity_sweep",
    "error_vs_group_size",
    "ste_figure",
    "loss_curves",
    "memory_per_format",
]


class FigureWidget(go.FigureWidget):
    """A ``go.FigureWidget`` whose first message to the browser already holds the whole figure.

    plotly's widget opens its comm (and the browser creates its model) with an empty figure
    and sends the traces and layout in a second message.  anywidget drops every message that
    reaches a model whose JavaScript (plotly's 5 MB bundle) took more than 2 s to load, which
    happens on a busy machine: the plot then shows empty default axes and never updates.
    Opening the comm only once the figure is complete makes the first render right anyway.
    Build the figure with its real data before wrapping it, for the same reason.
    """

    def __init__(self, *args, **kwargs):
        self.__dict__["_open_later"] = True  # plain attribute: BaseFigure vets the names it sets
        super().__init__(*args, **kwargs)
        del self.__dict__["_open_later"]
        self.open()

    def open(self):
        if not self.__dict__.get("_open_later"):
            super().open()


def hist_data(w, w_hat, bins: int = 81):
    """Shared-bin histograms of ``w`` and its quantized copy ``w_hat``, as fractions.

    Returns ``(centers float64[bins], frac_w, frac_w_hat)``; the range covers both arrays, so
    a ternary ``w_hat`` shows up as three spikes at ``-s, 0, +s``.
    """
    w, w_hat = np.asarray(w, np.float64).ravel(), np.asarray(w_hat, np.float64).ravel()
    lim = float(max(np.abs(w).max(), np.abs(w_hat).max(), 1e-12)) * 1.02
    edges = np.linspace(-lim, lim, bins + 1)
    a, _ = np.histogram(w, edges)
    b, _ = np.histogram(w_hat, edges)
    return (edges[:-1] + edges[1:]) / 2, a / w.size, b / w_hat.size


def histogram_before_after(w, w_hat, bins: int = 81, title: str = "Weights before and after absmean"):
    """Two stacked histograms sharing the x axis: float ``w`` (top) and quantized ``w_hat`` (bottom).

    Traces: 0 = float weights, 1 = quantized weights (bars, y = fraction of weights).
    """
    centers, a, b = hist_data(w, w_hat, bins)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("float weights", "after quantization (values the layer uses)"))
    fig.add_bar(x=centers, y=a, name="float", marker_color="#1f77b4", row=1, col=1)
    fig.add_bar(x=centers, y=b, name="quantized", marker_color="#d62728", row=2, col=1)
    fig.update_layout(title=title, height=420, bargap=0, showlegend=False)
    fig.update_yaxes(title_text="fraction", row=1, col=1)
    fig.update_yaxes(title_text="fraction", row=2, col=1)
    fig.update_xaxes(title_text="weight value", row=2, col=1)
    return fig


def granularity_sweep(w, group_sizes=(8, 16, 32, 64, 128, 256), scale_bits: int = 16) -> list[dict]:
    """Error of absmean ternary with one scale per tensor, per row, or per group of columns.

    Args:
        w: float ``[out, in]``; every group size must divide ``in``.
        scale_bits: storage of one scale (bf16 = 16), to price the extra scales.

    Returns:
        list of dicts ``{"granularity", "group_size", "n_scales", "sqnr_db", "mse",
        "bits_per_weight"}`` where ``bits_per_weight = 2 + scale_bits * n_scales / w.size``
        (2-bit packing plus the scales' share).
    """
    w = np.asarray(w, np.float32)
    settings = [("tensor", None), ("row", None)] + [("group", g) for g in group_sizes]
    rows = []
    for gran, g in settings:
        w_hat = fake_quant_ternary(w, gran, g or 128)
        _, s = absmean_ternary_grouped(w, gran, g or 128)
        rows.append({
            "granularity": gran,
            "group_size": g,
            "n_scales": int(s.size),
            "sqnr_db": sqnr_db(w, w_hat),
            "mse": mse(w, w_hat),
            "bits_per_weight": 2 + scale_bits * s.size / w.size,
        })
    return rows


def error_vs_group_size(rows: list[dict], title: str = "More scales, less error (and more bits)"):
    """SQNR against group size from :func:`granularity_sweep`; per-tensor and per-row as lines."""
    groups = [r for r in rows if r["granularity"] == "group"]
    fig = go.Figure()
    fig.add_scatter(x=[r["group_size"] for r in groups], y=[r["sqnr_db"] for r in groups],
                    mode="lines+markers", name="per group",
                    text=[f"{r['bits_per_weight']:.3f} bits/weight" for r in groups],
                    hovertemplate="group %{x}: %{y:.2f} dB<br>%{text}<extra></extra>")
    for r, dash in zip([r for r in rows if r["granularity"] != "group"], ("dash", "dot")):
        fig.add_hline(y=r["sqnr_db"], line_dash=dash,
                      annotation_text=f"per {r['granularity']}: {r['sqnr_db']:.2f} dB",
                      annotation_position="bottom left")
    fig.update_layout(title=title, height=380, xaxis_title="group size (columns per scale)",
                      yaxis_title="SQNR (dB, higher is better)")
    fig.update_xaxes(type="log")
    return fig


def ste_figure(lo: float = -2.5, hi: float = 2.5, n: int = 501):
    """Round (the forward) and the two candidate backwards: the true derivative (0 almost
    everywhere) and the straight-through estimator's (1 everywhere)."""
    x = np.linspace(lo, hi, n)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("forward: clip(round(x), -1, 1)", "backward: d/dx"))
    fig.add_scatter(x=x, y=np.clip(np.rint(x), -1, 1), name="quantize", row=1, col=1)
    fig.add_scatter(x=x, y=x, name="identity", line_dash="dot", row=1, col=1)
    fig.add_scatter(x=x, y=np.zeros_like(x), name="true gradient (0)", row=1, col=2)
    fig.add_scatter(x=x, y=np.ones_like(x), name="STE gradient (1)", line_dash="dash", row=1, col=2)
    fig.update_layout(height=320, title="The straight-through estimator")
    return fig


def loss_curves(curves: dict, title: str = "Training loss", log_y: bool = True):
    """One line per ``{name: [loss per step]}``."""
    fig = go.Figure()
    for name, ys in curves.items():
        fig.add_scatter(y=list(ys), mode="lines", name=name)
    fig.update_layout(title=title, height=340, xaxis_title="step", yaxis_title="loss")
    if log_y:
        fig.update_yaxes(type="log")
    return fig
