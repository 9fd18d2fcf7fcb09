"""QuantizationExplorer: move a slider, watch absmean ternary quantization and its error change.

What a student can try: heavier-tailed weights (laplace), a few large outliers (they inflate
the mean, so more small weights round to 0), finer scales (per row, per group: less error, more
bits), and a scale other than the mean (the rounding threshold is half the scale).
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np

from ..plots import FigureWidget, hist_data, histogram_before_after
from ..quant import absmean_ternary_grouped, mse, sqnr_db

__all__ = ["QuantizationExplorer", "make_weights", "ternarize"]

DISTRIBUTIONS = ("gaussian", "laplace", "uniform")


def make_weights(shape=(64, 256), distribution: str = "gaussian", outliers: float = 0.0,
                 seed: int = 0, outlier_gain: float = 10.0) -> np.ndarray:
    """Synthetic float32 weights ``shape`` (std about 0.02, like a trained layer).

    ``outliers`` is the fraction of entries multiplied by ``outlier_gain``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if not 0.0 <= outliers <= 1.0:
        raise ValueError(f"outliers is a fraction in [0, 1], got {outliers}")
    rng = np.random.default_rng(seed)
    std = 0.02
    if distribution == "gaussian":
        w = rng.normal(0.0, std, shape)
    elif distribution == "laplace":
        w = rng.laplace(0.0, std / np.sqrt(2), shape)  # same std as the gaussian
    else:
        w = rng.uniform(-std * np.sqrt(3), std * np.sqrt(3), shape)
    mask = rng.random(shape) < outliers
    w[mask] *= outlier_gain
    return w.astype(np.float32)


def ternarize(w, granularity: str = "tensor", group_size: int = 32, scale_mult: float = 1.0):
    """Absmean ternary with the scale multiplied by ``scale_mult`` (1.0 is BitNet's choice).

    Returns ``(q int8 [out, in], w_hat float32 [out, in], n_scales int)``.
    """
    if scale_mult <= 0:
        raise ValueError(f"scale_mult must be positive, got {scale_mult}")
    w = np.asarray(w, np.float32)
    _, s = absmean_ternary_grouped(w, granularity, group_size)
    s = s * np.float32(scale_mult)
    out, k = w.shape
    view = w.reshape(out, k // group_size, group_size) if granularity == "group" else w
    q = np.clip(np.rint(view / s), -1, 1)
    w_hat = (q * s).reshape(out, k).astype(np.float32)
    return q.reshape(out, k).astype(np.int8), w_hat, int(s.size)


class QuantizationExplorer:
    """Histogram of float weights vs their ternary values, with the error in a label.

    Attributes:
        controls: dict of ipywidgets — ``distribution, outliers, granularity, group_size,
            scale_mult, seed``.
        figure: ``go.FigureWidget`` (trace 0 float histogram, trace 1 quantized histogram).
        metrics: dict of the current ``sqnr_db, mse, zero_fraction, minus_one, plus_one,
            bits_per_weight, n_scales``.
        widget: the ``VBox`` to display.
    """

    def __init__(self, shape=(64, 256), seed: int = 0, bins: int = 81):
        self.shape, self.bins = tuple(shape), bins
        style = {"description_width": "110px"}
        self.controls = {
            "distribution": W.Dropdown(options=DISTRIBUTIONS, value="gaussian", description="distribution", style=style),
            "outliers": W.FloatSlider(value=0.0, min=0.0, max=0.05, step=0.005, readout_format=".3f",
                                      description="outlier fraction", style=style),
            "granularity": W.Dropdown(options=("tensor", "row", "group"), value="tensor",
                                      description="scale per", style=style),
            "group_size": W.Dropdown(options=(8, 16, 32, 64, 128), value=32, description="group size", style=style),
            "scale_mult": W.FloatSlider(value=1.0, min=0.25, max=2.0, step=0.05,
                                        description="scale × absmean", style=style),
            "seed": W.IntSlider(value=seed, min=0, max=20, description="seed", style=style),
        }
        self.label = W.HTML()
        self.metrics: dict = {}
        w, q, w_hat, n_scales = self.compute()
        # the figure holds its data before the browser sees it (see plots.FigureWidget)
        self.figure = FigureWidget(histogram_before_after(w, w_hat, bins))
        self._show_metrics(w, q, w_hat, n_scales)
        for c in self.controls.values():
            c.observe(self._update, names="value")
        self.widget = W.VBox([W.HBox([W.VBox(list(self.controls.values())[:3]),
                                      W.VBox(list(self.controls.values())[3:])]),
                              self.label, self.figure])

    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def compute(self):
        """Weights and their quantized copy for the current control values: ``(w, q, w_hat, n_scales)``."""
        v = self.values()
        w = make_weights(self.shape, v["distribution"], v["outliers"], v["seed"])
        q, w_hat, n_scales = ternarize(w, v["granularity"], v["group_size"], v["scale_mult"])
        return w, q, w_hat, n_scales

    def _update(self, change=None):
        w, q, w_hat, n_scales = self.compute()
        centers, a, b = hist_data(w, w_hat, self.bins)
        with self.figure.batch_update():
            self.figure.data[0].update(x=centers, y=a)
            self.figure.data[1].update(x=centers, y=b)
        self._show_metrics(w, q, w_hat, n_scales)

    def _show_metrics(self, w, q, w_hat, n_scales):
        self.metrics = {
            "sqnr_db": sqnr_db(w, w_hat),
            "mse": mse(w, w_hat),
            "zero_fraction": float(np.mean(q == 0)),
            "minus_one": float(np.mean(q == -1)),
            "plus_one": float(np.mean(q == 1)),
            "n_scales": n_scales,
            "bits_per_weight": 2 + 16 * n_scales / w.size,  # 2-bit codes + bf16 scales
        }
        m = self.metrics
        self.label.value = (
            f"<b>SQNR</b> {m['sqnr_db']:.2f} dB &nbsp; <b>MSE</b> {m['mse']:.3e} &nbsp; "
            f"<b>zeros</b> {m['zero_fraction']:.1%} (−1: {m['minus_one']:.1%}, +1: {m['plus_one']:.1%}) &nbsp; "
            f"<b>storage</b> {m['bits_per_weight']:.3f} bits/weight ({m['n_scales']} scale(s))")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
