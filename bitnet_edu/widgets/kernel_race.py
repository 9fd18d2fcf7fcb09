"""KernelRace: pick a matrix shape, tokens and threads; press "race" and watch every kernel's bar.

Each kernel of :mod:`bitnet_edu.kernels` multiplies the same random ternary matrix by the same
int8 activations; numpy float32 (BLAS) runs the same product as the yardstick. Bars show
milliseconds per call (best of ``repeat``), filled in one by one as each kernel finishes.
For careful numbers use ``python -m bitnet_edu.bench kernels``; this is the classroom version.
"""

from __future__ import annotations

import time

import ipywidgets as W
import numba
import numpy as np
import plotly.graph_objects as go

from .. import kernels
from ..config import BitNetConfig
from ..plots import FigureWidget

__all__ = ["KernelRace", "SHAPES"]

#: the four 2B4T matrix shapes (out, in), labelled with their projections, and a small one
SHAPES = {f"{o}×{i} ({', '.join(k.split('_')[0] for k in kinds)})": (o, i)
          for (o, i), kinds in BitNetConfig.preset("2b4t").matrix_shapes().items()}
SHAPES["256×512 (tiny)"] = (256, 512)


def _best_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


class KernelRace:
    """Bars of ms per matmul for each kernel and numpy float32.

    Attributes:
        controls: ``shape`` (Dropdown), ``tokens`` (1 = GEMV/decode, more = GEMM/prefill),
            ``threads`` (Numba threads), ``race`` (Button).
        figure: ``go.FigureWidget``; trace 0 holds one bar per contestant (ms per call).
        results: dict ``name -> ms`` of the last race.
        widget: the ``VBox`` to display.
    """

    def __init__(self, shape: str = "256×512 (tiny)", repeat: int = 5):
        self.repeat, self.results = repeat, {}
        self.names = kernels.available() + ["numpy float32"]
        self.controls = {
            "shape": W.Dropdown(options=list(SHAPES), value=shape, description="matrix"),
            "tokens": W.Dropdown(options=[1, 8, 32, 128], value=1, description="tokens"),
            "threads": W.IntSlider(value=numba.config.NUMBA_NUM_THREADS, min=1,
                                   max=numba.config.NUMBA_NUM_THREADS, description="threads"),
            "race": W.Button(description="race", button_style="success", icon="flag-checkered"),
        }
        self.controls["race"].on_click(lambda _: self.race())
        self.status = W.HTML("press <b>race</b> (the first race compiles the kernels: a few seconds)")
        fig = go.Figure(go.Bar(x=self.names, y=[0] * len(self.names), texttemplate="%{y:.3f} ms",
                               marker_color=["#00cc96"] * (len(self.names) - 1) + ["#636efa"]))
        fig.update_layout(title="ms per call (lower is faster)", yaxis_title="ms", height=340,
                          margin=dict(l=40, r=20, t=50, b=40))
        self.figure = FigureWidget(fig)
        self.widget = W.VBox([W.HBox([self.controls["shape"], self.controls["tokens"]]),
                              W.HBox([self.controls["threads"], self.controls["race"]]),
                              self.status, self.figure])

    def race(self) -> dict:
        """Run every contestant on the current settings, updating the bars as each finishes."""
        out, k = SHAPES[self.controls["shape"].value]
        t, threads = self.controls["tokens"].value, self.controls["threads"].value
        rng = np.random.default_rng(0)
        w = rng.integers(-1, 2, size=(out, k), dtype=np.int8)
        x = rng.integers(-128, 128, size=(t, k), dtype=np.int8)
        wf, xf = w.astype(np.float32), x.astype(np.float32)
        self.figure.data[0].y = [0] * len(self.names)
        numba.set_num_threads(threads)
        self.results = {}
        try:
            for i, name in enumerate(self.names):
                self.status.value = f"running <b>{name}</b> …"
                if name == "numpy float32":
                    ms = _best_ms(lambda: xf @ wf.T, self.repeat)
                else:
                    kern = kernels.get(name)
                    packed = kern.pack(w)
                    kern.matmul(packed, x)  # compile / warm up outside the timing
                    ms = _best_ms(lambda: kern.matmul(packed, x), self.repeat)
                self.results[name] = ms
                y = list(self.figure.data[0].y)
                y[i] = ms
                self.figure.data[0].y = y
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        fastest = min(self.results, key=self.results.get)
        base = self.results["numpy float32"]
        self.status.value = (f"{out}×{k}, {t} token(s), {threads} thread(s): fastest <b>{fastest}</b>, "
                             f"{base / self.results[fastest]:.1f}× numpy float32")
        return self.results

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
