"""`bench batch` and `bench serve` run end to end on small settings and report what they claim."""

import pytest

from bitnet_edu.bench.__main__ import main as bench


def test_bench_batch_reports_ratios_and_the_ceiling(capsys):
    assert bench(["batch", "--layers", "1", "--batch", "1,3", "--repeats", "1", "--prompt", "4",
                  "--new", "3"]) == 0
    out = capsys.readouterr().out
    assert "compute ceiling, measured now" in out and "x B=1" in out
    assert "single stream (model.generate's loop)" in out
    row = [ln for ln in out.splitlines() if ln.strip().startswith("3 ")][0].split()
    assert float(row[1]) > 0 and row[2].endswith("x")


def test_bench_batch_refuses_bad_arguments():
    with pytest.raises(SystemExit):
        bench(["batch", "--batch", "one"])
    with pytest.raises(SystemExit):
        bench(["batch", "--batch", "0"])


def test_bench_serve_has_no_errors(capsys):
    pytest.importorskip("fastapi")
    assert bench(["serve", "--clients", "1,3", "--requests", "2", "--new", "4"]) == 0
    out = capsys.readouterr().out
    lines = [r for r in (ln.split() for ln in out.splitlines()) if len(r) == 8 and r[0].isdigit()]
    assert [int(r[0]) for r in lines] == [1, 3]
    assert all(int(r[-1]) == 0 for r in lines)  # errors column
