"""LookupTableStepper: watch a TL1 / TL2 / T-MAC table being built and looked up, group by group.

For one output row ``w`` and one token ``x`` (tiny, int8), each step takes the next group of
activations (2 for TL1, 3 for TL2, 4 for T-MAC), builds its table of partial sums, and looks up
the entry the weights point to; the running sum reaches exactly ``w @ x``.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
from plotly.subplots import make_subplots

from ..kernels import tl1, tl2, tmac
from ..plots import FigureWidget

__all__ = ["LookupTableStepper", "lookup_steps"]

GROUP = {"tl1": 2, "tl2": 3, "tmac": 4}


def _sgn(v) -> str:
    return "+" if v > 0 else ("-" if v < 0 else "0")


def lookup_steps(kind: str, w: np.ndarray, x: np.ndarray) -> dict:
    """The table walk for one row: ``w`` ternary int8 ``[k]``, ``x`` int8 ``[k]`` (k % group == 0).

    Returns ``labels`` (entry names), ``tables`` int ``[G, entries]``, ``picks`` (per group a list
    of ``(entry, factor)``: TL2's sign bit gives factor -1, T-MAC's planes factors 1 and 2),
    ``contrib`` int ``[G]`` and ``offset`` (T-MAC subtracts ``sum(x)``); ``sum(contrib) + offset == w @ x``.
    """
    g = GROUP[kind]
    w2, x2 = w.reshape(1, -1).astype(np.int8), x.reshape(1, -1).astype(np.int8)
    if kind == "tl1":
        labels = [f"({_sgn(a)},{_sgn(b)})" for a, b in tl1.PAIRS]
        tables = tl1.build_table(x2)[0, :, :9]
        picks = [[(int(i), 1)] for i in tl1.pair_index(w2)[0]]
        offset = 0
    elif kind == "tl2":
        labels = ["(" + ",".join(_sgn(v) for v in t) + ")" for t in tl2.TRIPLES]
        tables = tl2.build_table(x2)[0, :, :14]
        idx, sign = tl2.fold(w2)
        picks = [[(int(i), -1 if s else 1)] for i, s in zip(idx[0], sign[0])]
        offset = 0
    elif kind == "tmac":
        labels = [f"{m:04b}"[::-1] for m in range(16)]  # bit i of m = x[4g+i] included
        tables = tmac.build_table(x2)[0]
        m0, m1 = tmac.plane_masks(w2)
        picks = [[(int(a), 1), (int(b), 2)] for a, b in zip(m0[0], m1[0])]
        offset = -int(x2.astype(np.int32).sum())
    else:
        raise ValueError(f"kind must be one of {list(GROUP)}, got {kind!r}")
    tables = tables.astype(np.int64)
    contrib = np.array([sum(f * tables[p, e] for e, f in pk) for p, pk in enumerate(picks)], np.int64)
    return {"group": g, "labels": labels, "tables": tables, "picks": picks, "contrib": contrib,
            "offset": offset}


class LookupTableStepper:
    """Step through a lookup-table kernel on one tiny row (``k`` weights, ``k`` a multiple of 12).

    Attributes:
        controls: ``kernel`` (ToggleButtons tl1 / tl2 / tmac), ``step`` (IntSlider, the group),
            ``seed`` (IntSlider, new random ``w`` and ``x``).
        figure: ``go.FigureWidget``: trace 0 the current group's table (looked-up entries red),
            trace 1 the running sum after each step, trace 2 the exact ``w @ x``.
        w, x: the current ternary row and int8 activations; ``walk``: :func:`lookup_steps` output.
        widget: the assembled box.
    """

    def __init__(self, k: int = 12, seed: int = 0):
        if k % 12:
            raise ValueError(f"k must be a multiple of 12 (groups of 2, 3 and 4), got {k}")
        self.k = k
        self.controls = {
            "kernel": W.ToggleButtons(options=["tl1", "tl2", "tmac"], value="tl1", description="kernel"),
            "step": W.IntSlider(value=0, min=0, max=k // 2 - 1, description="group"),
            "seed": W.IntSlider(value=seed, min=0, max=20, description="seed"),
        }
        self.label = W.HTML()
        self._compute()
        # the figure holds its data before the browser sees it (see plots.FigureWidget)
        self.figure = FigureWidget(self._figure())
        self.label.value = self._step_data()["label"]
        self.controls["seed"].observe(self._rebuild, names="value")
        self.controls["kernel"].observe(self._rebuild, names="value")
        self.controls["step"].observe(self._show, names="value")
        self.widget = W.VBox([W.HBox([self.controls["kernel"], self.controls["seed"]]),
                              self.controls["step"], self.label, self.figure])

    def _compute(self):
        """New ``w``, ``x`` (seed) and table walk (kernel); the step slider follows the group count."""
        rng = np.random.default_rng(self.controls["seed"].value)
        self.w = rng.integers(-1, 2, self.k).astype(np.int8)
        self.x = rng.integers(-20, 21, self.k).astype(np.int8)  # small values: readable sums
        self.walk = lookup_steps(self.controls["kernel"].value, self.w, self.x)
        n = len(self.walk["contrib"])
        step = self.controls["step"]
        step.max = n - 1
        step.value = min(step.value, n - 1)

    def _step_data(self) -> dict:
        """Trace data (plain lists) and the label text for the current group."""
        wk, p = self.walk, self.controls["step"].value
        g = wk["group"]
        cols = slice(p * g, (p + 1) * g)
        picked = {e for e, _ in wk["picks"][p]}
        running = np.cumsum(wk["contrib"])[: p + 1] + wk["offset"] * (p == len(wk["contrib"]) - 1)
        exact = int(self.w.astype(np.int32) @ self.x.astype(np.int32))
        n = len(wk["contrib"])
        looks = " + ".join(f"{f}×table[{wk['labels'][e]}]={f * int(wk['tables'][p, e])}" for e, f in wk["picks"][p])
        tail = (f" · last step adds the T-MAC offset −Σx = {wk['offset']}" if wk["offset"] and p == n - 1 else "")
        return {
            "table": (wk["labels"], wk["tables"][p].tolist(),
                      ["#d62728" if i in picked else "#9ecae1" for i in range(len(wk["labels"]))]),
            "running": (list(range(p + 1)), running.tolist()),
            "exact": ([0, n - 1], [exact, exact]),
            "label": (f"group {p}: x = {self.x[cols].tolist()}, w = {self.w[cols].tolist()} → {looks}"
                      f" · running sum {int(running[-1])} (exact w·x = {exact}){tail}"),
        }

    def _figure(self):
        d = self._step_data()
        fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                            subplot_titles=("table for this group of activations", "running sum"))
        x, y, colors = d["table"]
        fig.add_bar(x=x, y=y, marker_color=colors, name="table entry", row=1, col=1)
        fig.add_scatter(x=d["running"][0], y=d["running"][1], mode="lines+markers", name="sum so far",
                        row=1, col=2)
        fig.add_scatter(x=d["exact"][0], y=d["exact"][1], mode="lines", name="exact w·x",
                        line=dict(dash="dash", color="black"), row=1, col=2)
        fig.update_layout(height=360, legend=dict(orientation="h", y=-0.25))
        return fig

    def _rebuild(self, change=None):
        self._compute()
        self._show()

    def _show(self, change=None):
        d = self._step_data()
        with self.figure.batch_update():
            bar = self.figure.data[0]
            bar.x, bar.y, bar.marker.color = d["table"]
            self.figure.data[1].x, self.figure.data[1].y = d["running"]
            self.figure.data[2].x, self.figure.data[2].y = d["exact"]
        self.label.value = d["label"]

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)
