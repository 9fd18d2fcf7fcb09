"""Stage 6 widgets, headless: set a control (or send a prompt), assert the figure data changed."""

import time
from types import SimpleNamespace

import pytest

from bitnet_edu import energy
from bitnet_edu.widgets.chat import ChatWidget
from bitnet_edu.widgets.energy import EnergyCalculator


class FakeModel:
    """The public streaming API with known output: 'w0 w1 w2 ...', one word per token."""

    config = SimpleNamespace(max_position_embeddings=100)
    tokenizer = SimpleNamespace(encode=lambda s: s.split())

    def __init__(self, delay=0.0):
        self.delay, self.settings = delay, []

    def stream(self, prompt, max_new_tokens=8, **settings):
        self.settings.append(settings)
        for i in range(max_new_tokens):
            time.sleep(self.delay)
            yield f"w{i} "


def test_energy_calculator_reacts_to_every_control():
    w = EnergyCalculator()
    assert set(w.controls) == {"model", "context", "head", "dram"}
    shape = energy.SHAPES["BitNet b1.58 2B4T"]
    assert w.figure.data[0].y[2] == pytest.approx(energy.token_cost(shape, "ternary").bytes / 1e9)
    before = [tuple(t.y) for t in w.figure.data]

    w.controls["context"].value = 4096  # KV cache adds bytes to every format
    ctx = [tuple(t.y) for t in w.figure.data]
    assert all(a > b for a, b in zip(ctx[0], before[0]))
    assert w.figure.data[0].y[0] - before[0][0] == pytest.approx(energy.kv_cache_bytes(shape, 4096) / 1e9)

    w.controls["dram"].value = "high"  # memory energy doubles, arithmetic does not move
    assert w.figure.data[1].y[0] == pytest.approx(2 * ctx[1][0])
    assert w.figure.data[2].y == ctx[2]

    w.controls["head"].value = "ternary (2 bit)"  # a smaller head: bigger saving
    assert w.figure.data[3].y[2] > ctx[3][2]
    assert "bitnet.cpp's measured 55–82 %" in w.label.value

    w.controls["model"].value = "LLaMA-2 70B shape"
    assert w.figure.data[0].y[0] > 100  # 70 B fp16 weights read per token: > 100 GB
    assert w.costs["ternary"].bytes < w.costs["int8"].bytes < w.costs["fp16"].bytes


def test_chat_widget_streams_and_measures():
    m = FakeModel()
    w = ChatWidget(m, max_new_tokens=5, refresh_s=0.0)
    assert w.figure.data[0].value == 0
    r = w.send("hello there")
    assert r.text == "w0 w1 w2 w3 w4 " and r.tokens == 5
    assert "w4" in w.transcript.value and "hello there" in w.transcript.value
    assert w.figure.data[0].value > 0 and w.figure.data[0].value <= w.figure.data[0].gauge.axis.range[1]
    assert "5 tokens" in w.status.value
    assert m.settings[0]["temperature"] == w.controls["temperature"].value

    w.controls["prompt"].value = "from the box"  # the button path reads the prompt box
    w.controls["max_new_tokens"].value = 2
    w.controls["send"].click()
    assert len(w.history) == 2 and w.history[1][1].text == "w0 w1 "
    assert w.controls["prompt"].value == ""


def test_chat_widget_refuses_bad_input_and_times_out():
    w = ChatWidget(FakeModel(), max_new_tokens=5)
    assert w.send("") is None and "empty" in w.status.value
    assert w.send("x " * 99) is None and "context window" in w.status.value
    slow = ChatWidget(FakeModel(delay=0.05), max_new_tokens=50, timeout=0.1)
    r = slow.send("go")
    assert r.timed_out and r.tokens < 50 and "timed out" in slow.status.value
    assert not slow.controls["send"].disabled  # re-enabled after the reply


def test_kernel_race_fills_one_bar_per_contestant():
    from bitnet_edu import kernels
    from bitnet_edu.widgets.kernel_race import KernelRace

    w = KernelRace(repeat=1)
    assert list(w.figure.data[0].x) == kernels.available() + ["numpy float32"]
    assert all(v == 0 for v in w.figure.data[0].y)
    w.controls["tokens"].value = 8
    res = w.race()
    assert set(res) == set(w.figure.data[0].x)
    assert all(v > 0 for v in w.figure.data[0].y)
    assert "fastest" in w.status.value
