"""KernelRace: pick a matrix shape, tokens and threads; press "race" and watch every kernel's bar.

Each kernel of :mod:`bitnet_edu.kernels` multiplies the same random ternary matrix by the same
int8 activations; numpy float32 (BLAS) runs the same product as the yardstick, and a 16-bit
baseline (torch bfloat16, or NumPy float16 where torch is missing: the precision of the fp16
baseline behind bitnet.cpp's published speedups) runs it in a second trace. Bars show the median
milliseconds per call of ``repeat`` runs with min-max error bars, filled in one by one as each
kernel finishes; the status line prints the load average and warns when the machine is busy.
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


def _times_ms(fn, repeat: int) -> list[float]:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return ts


def _best_ms(fn, repeat: int) -> float:
    return min(_times_ms(fn, repeat))


def _baseline16(wf, xf):
    """(name, fn) of the 16-bit baseline: torch bf16 if torch imports, else NumPy float16."""
    try:
        import torch
    except ImportError:
        w16, x16 = wf.astype(np.float16), xf.astype(np.float16)
        return "numpy float16", lambda: x16 @ w16.T
    wt, xt = torch.from_numpy(wf).to(torch.bfloat16), torch.from_numpy(xf).to(torch.bfloat16)

    def run():
        with torch.inference_mode():
            return xt @ wt.T
    return "torch bf16", run


class KernelRace:
    """Bars of ms per matmul for each kernel and numpy float32.

    Attributes:
        controls: ``shape`` (Dropdown), ``tokens`` (1 = GEMV/decode, more = GEMM/prefill),
            ``threads`` (Numba threads), ``race`` (Button).
        figure: ``go.FigureWidget``; trace 0 holds one bar per contestant (median ms per call,
            min-max error bars); trace 1 the 16-bit baseline (``baseline16``).
        results: dict ``name -> median ms`` of the last race (trace 0's contestants).
        spread: dict ``name -> (min ms, max ms)`` of the last race, the 16-bit baseline included.
        baseline16: dict ``{"torch bf16" or "numpy float16": median ms}`` of the last race.
        load: the 1-minute load average before and after the last race.
        widget: the ``VBox`` to display.
    """

    def __init__(self, shape: str = "256×512 (tiny)", repeat: int = 5, baseline16: bool = True):
        self.repeat, self.results, self.spread, self.baseline16 = repeat, {}, {}, {}
        self.with_b16, self.load = baseline16, (None, None)
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
        fig.add_bar(x=["16-bit baseline"], y=[0], marker_color="#ab63fa", name="16-bit",
                    texttemplate="%{y:.3f} ms")
        fig.update_layout(title="median ms per call, min-max bars (lower is faster)", yaxis_title="ms",
                          height=340, margin=dict(l=40, r=20, t=50, b=40), showlegend=False)
        self.figure = FigureWidget(fig)
        self.widget = W.VBox([W.HBox([self.controls["shape"], self.controls["tokens"]]),
                              W.HBox([self.controls["threads"], self.controls["race"]]),
                              self.status, self.figure])

    def race(self) -> dict:
        """Run every contestant on the current settings, updating the bars as each finishes."""
        from ..cpu_threads import busy_warning, loadavg

        out, k = SHAPES[self.controls["shape"].value]
        t, threads = self.controls["tokens"].value, self.controls["threads"].value
        rng = np.random.default_rng(0)
        w = rng.integers(-1, 2, size=(out, k), dtype=np.int8)
        x = rng.integers(-128, 128, size=(t, k), dtype=np.int8)
        wf, xf = w.astype(np.float32), x.astype(np.float32)
        self.figure.data[0].y = [0] * len(self.names)
        self.figure.data[1].y = [0]
        load0 = loadavg()
        numba.set_num_threads(threads)
        self.results, self.spread, self.baseline16 = {}, {}, {}
        lo, hi = [0.0] * len(self.names), [0.0] * len(self.names)
        try:
            for i, name in enumerate(self.names):
                self.status.value = f"running <b>{name}</b> …"
                if name == "numpy float32":
                    ts = _times_ms(lambda: xf @ wf.T, self.repeat)
                else:
                    kern = kernels.get(name)
                    packed = kern.pack(w)
                    kern.matmul(packed, x)  # compile / warm up outside the timing
                    ts = _times_ms(lambda: kern.matmul(packed, x), self.repeat)
                ms = float(np.median(ts))
                self.results[name], self.spread[name] = ms, (min(ts), max(ts))
                lo[i], hi[i] = ms - min(ts), max(ts) - ms
                y = list(self.figure.data[0].y)
                y[i] = ms
                with self.figure.batch_update():
                    self.figure.data[0].y = y
                    self.figure.data[0].error_y = dict(type="data", symmetric=False, array=hi,
                                                       arrayminus=lo)
            if self.with_b16:  # last: torch's thread pool would compete with Numba's
                name, fn = _baseline16(wf, xf)
                self.status.value = f"running <b>{name}</b> …"
                fn()
                ts = _times_ms(fn, self.repeat)
                ms = float(np.median(ts))
                self.baseline16[name], self.spread[name] = ms, (min(ts), max(ts))
                with self.figure.batch_update():
                    self.figure.data[1].x, self.figure.data[1].y = [name], [ms]
                    self.figure.data[1].error_y = dict(type="data", symmetric=False,
                                                       array=[max(ts) - ms], arrayminus=[ms - min(ts)])
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        self.load = (load0, loadavg())
        fastest = min(self.results, key=self.results.get)
        base = self.results["numpy float32"]
        msg = (f"{out}×{k}, {t} token(s), {threads} thread(s), median of {self.repeat}: fastest "
               f"<b>{fastest}</b>, {base / self.results[fastest]:.1f}× numpy float32")
        for name, ms in self.baseline16.items():
            msg += f", {ms / self.results[fastest]:.1f}× {name}"
        if self.load[0] is not None:
            msg += f" · load average {self.load[0]:.2f} → {self.load[1]:.2f}"
        rel = [(b - a) / self.results[n] for n, (a, b) in self.spread.items() if n in self.results]
        warn = busy_warning(*self.load, float(np.median(rel)) if rel else None)
        if warn:
            msg += f"<br><b style='color:#d62728'>⚠ {warn}</b>"
        self.status.value = msg
        return self.results

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
