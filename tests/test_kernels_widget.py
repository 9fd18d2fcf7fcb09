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
