"""pytest plugin for running the course notebooks under nbval (``-p bitnet_edu.nbval_plugin``).

* Outputs that change run to run (plotly JSON, widget state, stderr, timings) never take part
  in nbval's output comparison.
* Exercise checks are graded while nbval runs the notebooks, in that single run:
  in ``solutions/`` every ``[check]`` line must say PASS, in ``exercises/`` every one must say
  NOT IMPLEMENTED (the student has not started), anywhere else a FAIL fails the cell.
"""

from __future__ import annotations

import re

import pytest

_CHECK = re.compile(r"\[check\] (\S+): (PASS|NOT IMPLEMENTED|FAIL)")
_VOLATILE = (
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
    "text/html",
    "image/png",
)


def _expected_status(path: str) -> str | None:
    parts = path.replace("\\", "/").split("/")
    if "solutions" in parts:
        return "PASS"
    if "exercises" in parts:
        return "NOT IMPLEMENTED"
    return None


def _text_of(outputs) -> str:
    chunks = []
    for out in outputs or []:
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            chunks.append(out.get("text", ""))
        elif "data" in out:
            chunks.append(str(out["data"].get("text/plain", "")))
    return "".join(chunks)


def pytest_configure(config):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: nothing to do
        return
    original = IPyNbCell.compare_outputs
    if getattr(original, "_bitnet_edu", False):
        return

    def compare_outputs(self, test, ref, skip_compare=None):
        skip = tuple(skip_compare or ()) + _VOLATILE + ("metadata", "traceback", "execution_count")
        test = [o for o in test if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        ref = [o for o in ref if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        return original(self, test, ref, skip)

    compare_outputs._bitnet_edu = True
    IPyNbCell.compare_outputs = compare_outputs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    outputs = getattr(item, "test_outputs", None)
    if outputs is None or outcome.excinfo is not None:
        return
    want = _expected_status(str(item.fspath))
    for name, status in _CHECK.findall(_text_of(outputs)):
        if want is None and status == "FAIL":
            pytest.fail(f"check {name} failed in a lesson notebook", pytrace=False)
        if want is not None and status != want:
            pytest.fail(f"check {name} reported {status}; expected {want} in {item.fspath}", pytrace=False)
