"""The load-time self-check: correct kernels pass, a kernel or head that is wrong is refused."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_edu import kernels
from bitnet_edu.kernels import head, selfcheck
from bitnet_edu.model.transformer import Head


@pytest.mark.parametrize("name", kernels.available())
def test_every_kernel_passes_on_this_cpu(name):
    selfcheck._DONE.discard(name)
    selfcheck.check_kernel(kernels.get(name))
    assert name in selfcheck._DONE


def test_a_wrong_kernel_is_refused(monkeypatch):
    k = kernels.get("mad")
    real = type(k).matmul
    monkeypatch.setattr(type(k), "matmul", lambda self, p, x: real(self, p, x) + (x.ndim == 2))
    monkeypatch.setattr(selfcheck, "_DONE", set())
    monkeypatch.setattr(kernels, "_CACHE", {})
    with pytest.raises(selfcheck.KernelSelfCheckError, match="kernel 'mad'.*instruction set"):
        kernels.get("mad")
    assert "mad" not in kernels._CACHE  # not handed out after refusing


def test_a_wrong_head_is_refused(monkeypatch):
    """The old AVX2 bug (int16 overflow in the int8 head) looked like this: logits off by ~30."""
    real = head.head_logits
    monkeypatch.setattr(head, "head_logits", lambda x, t, s: real(x, t, s) + np.float32(30))
    monkeypatch.setattr(selfcheck, "_DONE", set())
    with pytest.raises(selfcheck.KernelSelfCheckError, match="int8 head"):
        Head(np.ones((4, 256), np.float32), "int8")
    Head(np.ones((4, 256), np.float32), "float32")  # the exact head needs no check


def test_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("BITNET_EDU_SELF_CHECK", "0")
    monkeypatch.setattr(selfcheck, "_DONE", set())
    monkeypatch.setattr(head, "head_logits", lambda *a: None)
    Head(np.ones((4, 256), np.float32), "int8")  # no check, no error


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_head_top1_agrees_with_float_head(mode):
    """On random rows (the issue's measure): top-1 agreement with the float32 head >= 0.98 for
    int8 on every target (this test runs in the emulated-AVX2 pass too); int4 is coarser."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((16384, 2560), dtype=np.float32) * np.float32(0.02)
    x = rng.standard_normal((64, 2560), dtype=np.float32)
    exact = Head(table, "float32").logits(x).argmax(1)
    agree = float(np.mean(Head(table, mode).logits(x).argmax(1) == exact))
    assert agree >= (0.98 if mode == "int8" else 0.7), agree
