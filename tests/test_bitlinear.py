"""Stage 2: BitLinear (torch, trainable) and its integer NumPy inference form."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitnet_edu import bitlinear as bl  # noqa: E402
from bitnet_edu.quant import absmax_int8, absmean_ternary  # noqa: E402


def make_layer(k=64, n=40, rms_norm=False, seed=0):
    torch.manual_seed(seed)
    layer = bl.BitLinear(k, n, rms_norm=rms_norm)
    if rms_norm:
        with torch.no_grad():
            layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def test_weight_quant_matches_numpy():
    w = torch.randn(32, 48)
    q, s = absmean_ternary(w.numpy())
    np.testing.assert_allclose(bl.weight_quant(w).numpy(), q * s, rtol=1e-6, atol=1e-7)


def test_activation_quant_matches_numpy():
    x = torch.randn(5, 48) * torch.linspace(0.1, 10, 5)[:, None]
    q, s = absmax_int8(x.numpy())
    np.testing.assert_allclose(bl.activation_quant(x).numpy(), q * s, rtol=1e-5, atol=1e-7)


def test_forward_is_the_quantized_matmul():
    layer = make_layer()
    x = torch.randn(3, 7, 64)
    y = layer(x)
    wq = bl.weight_quant(layer.weight)
    want = bl.activation_quant(x) @ wq.T
    torch.testing.assert_close(y, want)
    assert len(torch.unique(wq)) <= 3


def test_ste_passes_gradients_through_rounding():
    x = torch.randn(10, requires_grad=True)
    y = bl.ste(x, torch.round(x))
    assert torch.equal(y, torch.round(x))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(10))  # rounding treated as identity
    layer = make_layer()
    layer(torch.randn(4, 64)).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_bitlinear_trains_from_scratch():
    # fit a ternary target map: QAT with STE must drive the loss well below its start
    torch.manual_seed(0)
    target = torch.randint(-1, 2, (16, 32)).float()
    layer = bl.BitLinear(32, 16)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        x = torch.randn(64, 32)
        loss = (layer(x) - x @ target.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.1 * np.mean(losses[:20])


@pytest.mark.parametrize("rms_norm", [False, True])
def test_inference_form_equals_torch_forward(rms_norm):
    layer = make_layer(k=96, n=30, rms_norm=rms_norm)  # 30 rows: not a multiple of 4, padded
    x = torch.randn(6, 96) * 3
    with torch.no_grad():
        want = layer(x).numpy()
    frozen = bl.BitLinearInference.from_torch(layer)
    y, steps = frozen.forward(x.numpy(), trace=True)
    # float32 rounding only: the integer part is exact, the rescale order differs
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert steps["acc_int32"].dtype == np.int32 and steps["x_int8"].dtype == np.int8
    q, _ = layer.ternary()
    np.testing.assert_array_equal(steps["acc_int32"], steps["x_int8"].astype(np.int64) @ q.T.astype(np.int64))
    assert frozen.nbytes == 8 * 96 + 4  # 30 rows padded to 32, 4 per byte


def test_inference_form_checks_shape():
    frozen = bl.BitLinearInference.from_float(np.random.default_rng(0).standard_normal((8, 16)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 16\]"):
        frozen(np.zeros((2, 15), np.float32))
    with pytest.raises(ValueError, match="in_features|\\[out, in\\]"):
        bl.BitLinearInference(np.zeros(4, np.int8), 1.0)


def test_replace_linears():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model.lm_head = torch.nn.Linear(4, 4)
    x = torch.randn(2, 8)
    w0 = model[0].weight.detach().clone()
    bl.replace_linears(model)
    assert isinstance(model[0], bl.BitLinear) and isinstance(model[2], bl.BitLinear)
    assert type(model.lm_head) is torch.nn.Linear  # skipped by name
    assert torch.equal(model[0].weight, w0)
    assert model(x).shape == (2, 4)


def test_int_mm_and_float_products_of_the_codes_are_identical(monkeypatch):
    """BitLinear's forward picks torch._int_mm (CPUs with VNNI) or a float32 matmul of the same
    int8 codes (exact: partial sums stay integers below 2**24); both give the same bits."""
    torch = pytest.importorskip("torch")
    from bitnet_edu import bitlinear as B
    torch.manual_seed(0)
    layer, x = B.BitLinear(384, 200), torch.randn(33, 384) * 3
    outs = []
    for fast in (True, False):
        monkeypatch.setattr(B, "_int_mm_is_fast", lambda fast=fast: fast)
        xg = x.clone().requires_grad_(True)
        y = layer(xg)
        y.square().sum().backward()
        outs.append((y.detach(), xg.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
