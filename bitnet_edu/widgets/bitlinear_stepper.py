"""BitLinearStepper: walk one token through a tiny frozen BitLinear, one integer step at a time.

input x → (sub-norm) → int8 x_q with one scale per token → int32 acc = x_q · W_qᵀ (ternary, so
only additions and subtractions) → y = acc × x_scale × w_scale.  The last step also shows the
float result of the unquantized layer, to see what the two quantizations cost.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
from plotly.subplots import make_subplots

from ..bitlinear import BitLinearInference
from ..plots import FigureWidget

__all__ = ["BitLinearStepper", "STEPS"]

STEPS = ("input x", "sub-norm", "int8 x_q", "int32 acc", "rescale y")


class BitLinearStepper:
    """Step-through of the integer BitLinear forward for a tiny layer (``in_features → out_features``).

    Attributes:
        controls: ``seed`` (IntSlider), ``token`` (IntSlider), ``step`` (ToggleButtons, value
            0..4 indexing :data:`STEPS`), ``sub_norm`` (Checkbox).
        figure: ``go.FigureWidget``: trace 0 heatmap of the ternary weights, trace 1 bars of the
            current step's vector for the chosen token, trace 2 the float reference (last step only).
        weight, x: the float weights ``[out, in]`` and inputs ``[tokens, in]`` for the current seed.
        layer: the :class:`~bitnet_edu.bitlinear.BitLinearInference` built from ``weight``.
        steps: the trace dict of ``layer.forward(x, trace=True)``.
        current: float64 vector shown by trace 1.
        widget: the assembled box.
    """

    def __init__(self, in_features: int = 8, out_features: int = 4, n_tokens: int = 3, seed: int = 0):
        self.in_features, self.out_features, self.n_tokens = in_features, out_features, n_tokens
        self.controls = {
            "seed": W.IntSlider(value=seed, min=0, max=20, description="seed"),
            "token": W.IntSlider(value=0, min=0, max=n_tokens - 1, description="token"),
            "step": W.ToggleButtons(options=[(f"{i + 1}. {s}", i) for i, s in enumerate(STEPS)], value=0,
                                    description="step"),
            "sub_norm": W.Checkbox(value=False, description="sub-norm (RMSNorm) first"),
        }
        self.label = W.HTML()
        self._compute()
        # the figure holds its data before the browser sees it (see plots.FigureWidget)
        self.figure = FigureWidget(self._figure())
        self.label.value = self._explain()
        for name in ("seed", "sub_norm"):
            self.controls[name].observe(self._rebuild, names="value")
        for name in ("token", "step"):
            self.controls[name].observe(self._show, names="value")
        self.widget = W.VBox([W.HBox([self.controls["seed"], self.controls["token"], self.controls["sub_norm"]]),
                              self.controls["step"], self.label, self.figure])

    def _compute(self):
        """Weights, inputs and layer for the current seed and sub-norm; every step's values."""
        rng = np.random.default_rng(self.controls["seed"].value)
        self.weight = rng.normal(0, 1 / np.sqrt(self.in_features), (self.out_features, self.in_features)).astype(np.float32)
        self.x = rng.normal(0, 1, (self.n_tokens, self.in_features)).astype(np.float32)
        norm = np.ones(self.in_features, np.float32) if self.controls["sub_norm"].value else None
        self.layer = BitLinearInference.from_float(self.weight, norm_weight=norm)
        _, self.steps = self.layer.forward(self.x, trace=True)

    def _step_data(self):
        """``(current, ref, title)``: the chosen step's vector, the float reference (last step only)."""
        t, k = self.controls["token"].value, self.controls["step"].value
        s = self.steps
        vectors = (s["input"][t], s.get("normed", s["input"])[t], s["x_int8"][t], s["acc_int32"][t], s["output"][t])
        self.current = np.asarray(vectors[k], np.float64)
        ref = self._float_reference(t) if k == 4 else np.array([])
        return self.current, ref, f"step {k + 1}: {STEPS[k]} (token {t})"

    def _figure(self):
        current, ref, title = self._step_data()
        fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55],
                            subplot_titles=("ternary weights W_q", title))
        fig.add_heatmap(z=self.layer.weight_ternary, colorscale="RdBu", zmin=-1, zmax=1, showscale=False,
                        texttemplate="%{z}", row=1, col=1)
        fig.add_bar(x=np.arange(current.size), y=current, name="value", marker_color="#1f77b4", row=1, col=2)
        fig.add_scatter(x=np.arange(ref.size), y=ref, mode="markers", name="float layer (no quantization)",
                        marker=dict(color="black", symbol="x", size=10), row=1, col=2)
        fig.update_yaxes(autorange="reversed", title_text="output row", row=1, col=1)
        fig.update_xaxes(title_text="input feature", row=1, col=1)
        fig.update_layout(height=360, legend=dict(orientation="h", y=-0.2))
        return fig

    def _rebuild(self, change=None):
        """New weights and inputs (seed) or a new layer (sub-norm): recompute every step."""
        self._compute()
        with self.figure.batch_update():
            self.figure.data[0].z = self.layer.weight_ternary
        self._show()

    def _float_reference(self, t: int) -> np.ndarray:
        x = self.steps.get("normed", self.x)[t]
        return x.astype(np.float64) @ self.weight.T.astype(np.float64)

    def _show(self, change=None):
        current, ref, title = self._step_data()
        with self.figure.batch_update():
            self.figure.data[1].update(x=np.arange(current.size), y=current)
            self.figure.data[2].update(x=np.arange(ref.size), y=ref)
            self.figure.layout.annotations[1].text = title
        self.label.value = self._explain()

    def _explain(self) -> str:
        """The arithmetic of the current step, with this token's numbers."""
        t, k = self.controls["token"].value, self.controls["step"].value
        s, wq = self.steps, self.layer.weight_ternary
        xs, ws = float(s["x_scale"][t, 0]), self.layer.scale

        def vec(v, fmt="{:.3f}"):
            return "[" + ", ".join(fmt.format(float(a)) for a in v) + "]"

        x_q = s["x_int8"][t]
        if k == 0:
            return f"x = {vec(s['input'][t])} &nbsp; (float, {self.in_features} features)"
        if k == 1:
            if "normed" not in s:
                return "sub-norm is off: x passes through unchanged (tick the box to apply RMSNorm)."
            return f"x / rms(x) = {vec(s['normed'][t])} &nbsp; (rms after norm = 1)"
        if k == 2:
            amax = xs * 127
            return (f"x_scale = max|x| / 127 = {amax:.4f} / 127 = {xs:.6f}<br>"
                    f"x_q = round(x / x_scale) = {vec(x_q, '{:.0f}')} &nbsp; (int8)")
        if k == 3:
            # W_q is ternary: each term is +x_q[j], -x_q[j] or skipped
            terms = " ".join(f"{'+' if w > 0 else '−'}({int(a)})" for a, w in zip(x_q, wq[0]) if w != 0) or "0"
            return (f"acc[0] = Σ_j x_q[j]·W_q[0, j] = {terms} = {int(s['acc_int32'][t, 0])}<br>"
                    f"acc = {vec(s['acc_int32'][t], '{:.0f}')} &nbsp; (int32; zeros in W_q skip a term)")
        ref = self._float_reference(t)
        return (f"y = acc × x_scale × w_scale = acc × {xs:.6f} × {ws:.4f}<br>"
                f"y = {vec(s['output'][t])}<br>float layer x·Wᵀ = {vec(ref)} &nbsp; "
                f"(max difference {np.abs(ref - s['output'][t]).max():.3f})")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
