"""Headless tests of the stage 1–2 widgets: set a control, the figure and metrics follow."""

import numpy as np
import pytest

from bitnet_edu import quant
from bitnet_edu.bitlinear import BitLinearInference
from bitnet_edu.widgets import BitLinearStepper, QuantizationExplorer
from bitnet_edu.widgets.quant_explorer import make_weights, ternarize


def _y(fig, i):
    return np.array(fig.data[i].y, dtype=float)


# --- QuantizationExplorer ----------------------------------------------------------------------

def test_explorer_metrics_match_the_package():
    w = QuantizationExplorer()
    wts = make_weights((64, 256), "gaussian", 0.0, 0)
    q, s = quant.absmean_ternary(wts)
    assert w.metrics["sqnr_db"] == pytest.approx(quant.sqnr_db(wts, q * s), rel=1e-5)
    assert w.metrics["zero_fraction"] == pytest.approx(quant.zero_fraction(q))
    assert w.metrics["n_scales"] == 1
    assert "SQNR" in w.label.value and f"{w.metrics['sqnr_db']:.2f}" in w.label.value
    # the bottom histogram holds the three ternary values only
    assert np.count_nonzero(_y(w.figure, 1)) == 3
    assert _y(w.figure, 0).sum() == pytest.approx(1.0) and _y(w.figure, 1).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name, value", [("distribution", "laplace"), ("outliers", 0.02),
                                         ("granularity", "row"), ("scale_mult", 1.5), ("seed", 3)])
def test_every_explorer_control_changes_the_figure(name, value):
    w = QuantizationExplorer()
    before = (_y(w.figure, 0).copy(), _y(w.figure, 1).copy(), dict(w.metrics))
    w.controls[name].value = value
    after = (_y(w.figure, 0), _y(w.figure, 1), w.metrics)
    changed = not (np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1]))
    assert changed and before[2]["sqnr_db"] != after[2]["sqnr_db"]


def test_finer_scales_cost_bits_and_group_size_is_live():
    w = QuantizationExplorer()
    w.controls["granularity"].value = "group"
    w.controls["group_size"].value = 8
    g8 = dict(w.metrics)
    w.controls["group_size"].value = 128
    assert g8["n_scales"] == 64 * 256 // 8 and w.metrics["n_scales"] == 64 * 256 // 128
    assert g8["bits_per_weight"] == pytest.approx(2 + 16 / 8)
    assert g8["sqnr_db"] > w.metrics["sqnr_db"]  # more scales, less error


def test_outliers_push_weights_to_zero():
    w = QuantizationExplorer()
    z0 = w.metrics["zero_fraction"]
    w.controls["outliers"].value = 0.05
    assert w.metrics["zero_fraction"] > z0 + 0.05


def test_ternarize_agrees_with_fake_quant():
    wts = make_weights((8, 32), "laplace", 0.01, 1)
    for gran in ("tensor", "row", "group"):
        q, w_hat, _ = ternarize(wts, gran, 16)
        np.testing.assert_allclose(w_hat, quant.fake_quant_ternary(wts, gran, 16), rtol=1e-6)
        assert set(np.unique(q)) <= {-1, 0, 1}
    with pytest.raises(ValueError, match="distribution"):
        make_weights(distribution="cauchy")


# --- BitLinearStepper --------------------------------------------------------------------------

def test_stepper_steps_show_the_integer_forward():
    w = BitLinearStepper(in_features=8, out_features=4, n_tokens=3, seed=0)
    layer = BitLinearInference.from_float(w.weight)
    xq, xs = quant.absmax_int8(w.x)
    acc = xq.astype(np.int32) @ layer.weight_ternary.T.astype(np.int32)
    w.controls["token"].value = 1
    seen = []
    for k in range(5):
        w.controls["step"].value = k
        seen.append(_y(w.figure, 1))
    np.testing.assert_allclose(seen[0], w.x[1], rtol=1e-6)
    np.testing.assert_array_equal(seen[2], xq[1])
    np.testing.assert_array_equal(seen[3], acc[1])
    np.testing.assert_allclose(seen[4], acc[1] * xs[1, 0] * layer.scale, rtol=1e-5)
    assert len(w.figure.data[2].y) == 4  # float reference shown on the last step only
    w.controls["step"].value = 3
    assert len(w.figure.data[2].y) == 0
    assert f"= {int(acc[1, 0])}" in w.label.value  # the sum written out, with its result


def test_stepper_matches_the_torch_layer():
    torch = pytest.importorskip("torch")
    from bitnet_edu.bitlinear import BitLinear

    w = BitLinearStepper(seed=5)
    w.controls["step"].value = 4
    layer = BitLinear(8, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.weight))
        y = layer(torch.from_numpy(w.x)).numpy()
    for t in range(3):
        w.controls["token"].value = t
        np.testing.assert_allclose(_y(w.figure, 1), y[t], rtol=1e-4, atol=1e-5)


def test_stepper_seed_and_subnorm_controls_update():
    w = BitLinearStepper()
    z0 = np.array(w.figure.data[0].z).copy()
    w.controls["seed"].value = 7
    assert not np.array_equal(z0, np.array(w.figure.data[0].z))
    w.controls["step"].value = 1
    off = _y(w.figure, 1).copy()
    assert "off" in w.label.value
    w.controls["sub_norm"].value = True
    on = _y(w.figure, 1)
    assert not np.allclose(off, on)
    assert np.sqrt(np.mean(on ** 2)) == pytest.approx(1.0, rel=1e-3)  # RMSNorm output has rms 1


def test_widgets_assemble_a_box():
    import ipywidgets as W

    for w in (QuantizationExplorer(), BitLinearStepper()):
        assert isinstance(w.widget, W.Box) and w.figure in w.widget.children
