"""EnergyCalculator: bytes and energy per generated token, fp16 vs int8 vs ternary.

All arithmetic lives in :mod:`bitnet_edu.energy` (Horowitz's ISSCC 2014 45 nm table, cited
there); this widget only displays it. Things to try: a longer context (the KV cache starts to
matter), the head in int8 or ternary (the fp16 head is why 2B4T lands inside bitnet.cpp's
measured 55-82 % (arXiv 2410.16144) and not at 87 %), the high DRAM figure (every bar doubles, the ratios barely move).
"""

from __future__ import annotations

import json

import ipywidgets as W
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import energy as E
from ..plots import FigureWidget

__all__ = ["EnergyCalculator", "available_shapes"]

HEAD_BITS = {"fp16": 16, "int8": 8, "ternary (2 bit)": 2}
COLORS = {"fp16": "#636efa", "int8": "#ef553b", "ternary": "#00cc96"}


def available_shapes() -> dict:
    """:data:`bitnet_edu.energy.SHAPES` plus the embedded default model when it is installed."""
    shapes = dict(E.SHAPES)
    try:
        from .. import DEFAULT_MODEL

        cfg = json.loads((DEFAULT_MODEL / "config.json").read_text())
        shapes["embedded default model"] = E.Shape.from_config(cfg)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not shipped yet: the published shapes are enough
    return shapes


def _empty_figure() -> go.Figure:
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09, subplot_titles=(
        "GB read per token", "mJ per token (45 nm)", "ternary vs fp16: energy saved"))
    fmts = list(E.FORMATS)
    fig.add_bar(x=fmts, y=[0] * 3, marker_color=[COLORS[f] for f in fmts], showlegend=False,
                texttemplate="%{y:.2f}", row=1, col=1)
    fig.add_bar(x=fmts, y=[0] * 3, name="DRAM traffic", marker_color="#7f7f7f", row=1, col=2)
    fig.add_bar(x=fmts, y=[0] * 3, name="arithmetic", marker_color="#ffa15a", row=1, col=2)
    fig.add_bar(x=["arithmetic only", "weights + KV traffic", "total"], y=[0] * 3, showlegend=False,
                marker_color="#00cc96", texttemplate="%{y:.0%}", row=1, col=3)
    lo, hi = E.SEED_CLAIM
    fig.add_hrect(y0=lo, y1=hi, fillcolor="gold", opacity=0.25, line_width=0, row=1, col=3,
                  annotation_text="seed: 55–82 % (measured)", annotation_position="bottom left")
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=3)
    fig.update_layout(barmode="stack", height=360, width=920, margin=dict(l=40, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.15, x=0.35))
    return fig


class EnergyCalculator:
    """Per-token bytes and energy for the three weight formats, and the claim check.

    Attributes:
        controls: ``model`` (shape name), ``context`` (tokens in the KV cache), ``head``
            (precision of the output head in the quantized models), ``dram`` (low/high).
        figure: ``go.FigureWidget``; trace 0 GB/token, traces 1–2 mJ/token (DRAM, arithmetic),
            trace 3 the ternary-vs-fp16 reductions beside the shaded 55–82 % band.
        costs: dict ``format -> TokenCost`` for the current settings; ``reductions`` likewise.
        widget: the ``VBox`` to display.
    """

    def __init__(self, model: str = "BitNet b1.58 2B4T", context: int = 0):
        self.shapes = available_shapes()
        style = {"description_width": "90px"}
        self.controls = {
            "model": W.Dropdown(options=list(self.shapes), value=model, description="model", style=style),
            "context": W.IntSlider(value=context, min=0, max=8192, step=256, description="context", style=style),
            "head": W.Dropdown(options=list(HEAD_BITS), value="fp16", description="head in", style=style),
            "dram": W.ToggleButtons(options=["low", "high"], value="low", description="DRAM pJ",
                                    tooltips=["1.3 nJ / 64 bit", "2.6 nJ / 64 bit"], style=style),
        }
        self.label = W.HTML()
        self.figure = _empty_figure()  # a plain Figure until it holds data (see plots.FigureWidget)
        self._update()
        self.figure = FigureWidget(self.figure)
        for c in self.controls.values():
            c.observe(self._update, names="value")
        self.widget = W.VBox([W.HBox([W.VBox([self.controls["model"], self.controls["context"]]),
                                      W.VBox([self.controls["head"], self.controls["dram"]])]),
                              self.figure, self.label])

    def compute(self):
        """``(costs, reductions)`` for the current control values."""
        v = {k: c.value for k, c in self.controls.items()}
        shape, head_bits = self.shapes[v["model"]], HEAD_BITS[v["head"]]
        costs = {f: E.token_cost(shape, f, context=v["context"], head_bits=head_bits, dram=v["dram"])
                 for f in E.FORMATS}
        reductions = E.claim_comparison(shape, context=v["context"], head_bits=head_bits, dram=v["dram"])
        return costs, reductions

    def _update(self, change=None):
        self.costs, self.reductions = self.compute()
        cs = list(self.costs.values())
        red = [self.reductions[k] for k in ("arithmetic only", "weights + KV traffic", "total")]
        with self.figure.batch_update():
            self.figure.data[0].y = [c.bytes / 1e9 for c in cs]
            self.figure.data[1].y = [c.memory_pj * 1e-9 for c in cs]
            self.figure.data[2].y = [c.compute_pj * 1e-9 for c in cs]
            self.figure.data[3].y = red
        t, fp = self.costs["ternary"], self.costs["fp16"]
        r = self.reductions["total"]
        self.label.value = (
            f"<b>ternary</b> {t.bytes / 1e9:.2f} GB and {t.total_mj:.0f} mJ per token vs "
            f"<b>fp16</b> {fp.bytes / 1e9:.2f} GB and {fp.total_mj:.0f} mJ: <b>{r:.1%} less energy</b>, "
            f"{E.verdict(r)} bitnet.cpp's measured 55–82 % (arXiv 2410.16144). DRAM traffic is {t.memory_pj / t.total_pj:.1%} of the "
            f"ternary total; arithmetic alone would promise {red[0]:.0%}. "
            f"<i>Table: Horowitz, ISSCC 2014, 45 nm.</i>")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
