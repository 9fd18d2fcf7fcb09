"""The lookup-table widget: its walk is exact and its controls update the figure in place."""

import numpy as np
import pytest

from bitnet_edu.widgets.lut import LookupTableStepper, lookup_steps


@pytest.mark.parametrize("kind", ["tl1", "tl2", "tmac"])
def test_walk_sums_to_dot(kind):
    rng = np.random.default_rng(0)
    w = rng.integers(-1, 2, 24).astype(np.int8)
    x = rng.integers(-128, 128, 24).astype(np.int8)
    walk = lookup_steps(kind, w, x)
    assert int(walk["contrib"].sum()) + walk["offset"] == int(w.astype(np.int32) @ x.astype(np.int32))
    assert walk["tables"].shape[1] == {"tl1": 9, "tl2": 14, "tmac": 16}[kind] == len(walk["labels"])


def test_controls_update_figure():
    wd = LookupTableStepper(k=12, seed=1)
    first = list(wd.figure.data[0].y)
    wd.controls["step"].value = 3
    assert list(wd.figure.data[0].y) != first and len(wd.figure.data[1].y) == 4
    wd.controls["kernel"].value = "tmac"
    assert len(wd.figure.data[0].x) == 16 and wd.controls["step"].max == 2
    wd.controls["step"].value = 2  # last step: running sum + offset = exact
    assert wd.figure.data[1].y[-1] == wd.figure.data[2].y[0]
    assert "T-MAC offset" in wd.label.value
    with pytest.raises(ValueError, match="multiple of 12"):
        LookupTableStepper(k=10)


def test_kernel_race_medians_spread_and_16bit_baseline(monkeypatch):
    from bitnet_edu import kernels
    from bitnet_edu.bench import kernels as bench
    from bitnet_edu.widgets import kernel_race
    from bitnet_edu.widgets.kernel_race import KernelRace

    from bitnet_edu import cpu_threads
    monkeypatch.setattr(cpu_threads, "loadavg", lambda: 3.0)  # a busy machine: the warning shows
    w = KernelRace(repeat=3)
    res = w.race()
    assert list(res) == kernels.available() + ["numpy float32"]
    for name, ms in res.items():
        lo, hi = w.spread[name]
        assert lo <= ms <= hi
    assert list(w.figure.data[0].y) == list(res.values())
    assert len(w.figure.data[0].error_y.array) == len(res)
    (b16, ms16), = w.baseline16.items()
    assert b16 in ("torch bf16", "numpy float16") and w.figure.data[1].y[0] == ms16 > 0
    assert "load average 3.00" in w.status.value and "busy" in w.status.value
    # without torch, NumPy float16 stands in
    wf = np.ones((4, 8), np.float32)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    name, fn = kernel_race._baseline16(wf, np.ones((1, 8), np.float32))
    assert name == "numpy float16" and fn().dtype == np.float16 and float(fn()[0, 0]) == 8


def test_bench_race_keeps_spread_load_and_16bit_baseline(monkeypatch):
    import sys

    from bitnet_edu.bench import kernels as bench
    from bitnet_edu.bench import roofline

    monkeypatch.setitem(sys.modules, "torch", None)  # no torch: NumPy float16 stands in
    monkeypatch.setattr(bench, "loadavg", lambda: 2.0)
    logs = []
    r = bench.run(shapes=[(64, 256)], threads=(1,), tokens=(1,), names=["naive", "mad"], quick=True,
                  cold_mb=1, repeat=3, compile_cost=False, log=logs.append)
    assert r["baseline16"] == "numpy f16" and r["busy"] and r["loadavg_before"] == 2.0
    for row in r["rows"]:
        assert row["ms_min"] <= row["ms_q1"] <= row["ms"] <= row["ms_q3"] <= row["ms_max"]
        assert row["repeat"] == 3 and row["b16_ms"] > 0 and "torch_bf16_ms" not in row
    table = bench.format_table(r)
    assert "WARNING: the machine was busy" in table and "vs numpy f16" in table
    assert any("WARNING" in s for s in logs)
    assert bench.busy_warning(0.1, 0.2) == ""

    b = roofline.bytes_per_token(bits_per_weight=2.0)
    from bitnet_edu.config import BitNetConfig
    c = BitNetConfig.preset("2b4t")
    assert b["linear"] == c.linear_params / 4 and b["head"] == 2 * c.head_params
    assert roofline.tok_s_ceiling(10.0, 1e9) == 10.0
    rows = roofline.kernel_rows(r, bandwidth_gbs=1000.0)
    assert {x["kernel"] for x in rows} == {"naive", "mad"}
    assert all(x["bound"] == "compute" and x["tok_s_lo"] <= x["tok_s"] <= x["tok_s_hi"] for x in rows)
    assert "bound" in roofline.format_rows(rows) and len(roofline.roofline_figure(rows).data) == 2
