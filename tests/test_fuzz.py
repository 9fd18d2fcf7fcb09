"""The loader fuzz harness (``bitnet_edu.fuzz``, issue 11 "Also build") and a bounded run of it.

The bounded run mutates every format (safetensors bytes and header, ``config.json``,
``generation_config.json``, ``tokenizer.json``, the shard index, GGUF) a few hundred times and
loads each mutant in a forked child with an address-space and a time limit.  It guards defects
4 (sizes from a config allocated before they are checked: hangs and MemoryError), 5 (NaN
weights, overlapping data ranges, a config contradicting the weights load silently), 7 (shard
paths outside the model directory) and 10 (loader errors that are not ValueError).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bitnet_edu import fuzz

N_PER_FORMAT = 200  # about 40 s for all six formats on one core


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.Seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def _case(seeds, **kw):
    return fuzz.Case("config", 0, str(seeds.tiny), "test case", **kw)


def test_seeds_load_and_run(seeds):
    """Every unmutated seed loads, runs a forward and generates (else the run stops)."""
    fuzz._warm_up(seeds)
    for path in (seeds.tiny, seeds.default, seeds.sharded, seeds.gguf / "model.gguf"):
        assert fuzz._exercise(path)["kind"] == "loaded", path


def _segfault(path):
    os.kill(os.getpid(), signal.SIGSEGV)


def _sleep(path):
    time.sleep(60)


def _allocate(path):
    try:
        a = np.ones(2**33, np.uint8)  # 8 GiB: over the 256 MB the test allows
    except MemoryError:
        return {"kind": "memory", "detail": "MemoryError"}
    return {"kind": "loaded", "detail": str(a.size)}


def _raise_type_error(path):
    raise TypeError("boom")


def test_a_crash_a_hang_and_a_huge_allocation_are_counted_not_fatal(seeds):
    crash = fuzz.run_case(_case(seeds), seeds, exercise=_segfault)
    assert (crash.kind, crash.detail) == ("crash", "SIGSEGV")
    t = time.monotonic()
    hang = fuzz.run_case(_case(seeds), seeds, timeout=1, exercise=_sleep)
    assert hang.kind == "hang" and time.monotonic() - t < 10
    mem = fuzz.run_case(_case(seeds), seeds, mem_mb=256, exercise=_allocate)
    assert mem.kind == "memory", mem.detail
    other = fuzz.run_case(_case(seeds), seeds, exercise=_raise_type_error)
    assert other.kind == "other" and "TypeError" in other.detail


def _fresh(code: str):
    """Run ``code`` in a fresh interpreter (forked children that load a model need a fork-safe
    Numba thread pool, which this test process may already lack); its stdout as JSON."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_outcomes_of_real_mutants():
    """A clean error names the file; a must-fail mutant that loads counts as accepted."""
    got = _fresh("""if 1:
        import json, sys, tempfile
        from bitnet_edu import fuzz
        fuzz._fork_safe_threads()
        seeds = fuzz.Seeds(tempfile.mkdtemp())
        fuzz._warm_up(seeds)
        def case(name, data, must_fail):
            c = fuzz.Case("config", 0, str(seeds.tiny), "", {name: data}, ".", must_fail)
            o = fuzz.run_case(c, seeds)
            return [o.kind, o.named, o.detail]
        gen = b'{"temperature": 0.5}'
        json.dump([case("config.json", b"{", True), case("generation_config.json", gen, False),
                   case("generation_config.json", gen, True)], sys.stdout)
        """)
    assert got[0][:2] == ["clean", True], got[0]
    assert got[1][0] == "loaded" and got[2][0] == "accepted", got


def test_cases_are_reproducible_and_varied(seeds):
    for fmt in fuzz.FORMATS:
        a = [fuzz.make_case(fmt, i, seeds, seed=1) for i in range(30)]
        b = [fuzz.make_case(fmt, i, seeds, seed=1) for i in range(30)]
        assert [(c.desc, c.files) for c in a] == [(c.desc, c.files) for c in b], fmt
        assert len({c.desc for c in a}) > 20, fmt
        assert all(c.files for c in a), fmt


def test_must_fail_judgement():
    old = {**fuzz.TINY}
    assert fuzz._config_must_fail(old, {**old, "num_hidden_layers": 1})
    assert fuzz._config_must_fail(old, {**old, "num_hidden_layers": 2**31})
    assert fuzz._config_must_fail(old, {**old, "rope_theta": 0})
    assert fuzz._config_must_fail(old, {**old, "rms_norm_eps": float("nan")})
    assert fuzz._config_must_fail(old, {**old, "eos_token_id": "x"})
    assert fuzz._config_must_fail(old, [old])
    # RoPE tables are sized lazily: a long context over small weights is a valid model
    assert not fuzz._config_must_fail(old, {**old, "max_position_embeddings": 2**24})
    assert not fuzz._config_must_fail(old, {**old, "head_dim": None})  # 128 / 4 = 32 anyway
    assert not fuzz._config_must_fail(old, {**old, "rms_norm_eps": 0})


def test_report_table_and_failures():
    counts = {"config": dict.fromkeys(fuzz.KINDS, 0), "gguf": dict.fromkeys(fuzz.KINDS, 0)}
    counts["config"].update(clean=5, loaded=2, hang=1)
    counts["gguf"].update(clean=7)
    r = fuzz.Report(counts, {"config": {}, "gguf": {}}, {"config": 1, "gguf": 0}, 1.0)
    assert r.describe() == ""
    assert r.failures() == {"config": {"hang": 1}}
    lines = r.table().splitlines()
    assert lines[0].split() == ["format", "cases", *fuzz.KINDS, "unnamed"]
    assert lines[1].split()[:3] == ["config", "8", "5"] and lines[-1].split()[:2] == ["all", "15"]


@pytest.fixture(scope="module")
def bounded_run():
    """A few hundred mutants of each format, in a fresh interpreter: forked children need a
    fork-safe Numba thread pool, which a test process that already ran kernels may not have."""
    code = ("import json, sys; from bitnet_edu import fuzz\n"
            f"r = fuzz.run(fuzz.FORMATS, {N_PER_FORMAT}, seed=0, timeout=10, max_examples=2)\n"
            "ex = {f: {k: [f'#{o.case.index} {o.case.desc} -> {o.detail[:200]}' for o in v]\n"
            "          for k, v in d.items()} for f, d in r.examples.items()}\n"
            "json.dump({'counts': r.counts, 'examples': ex, 'signatures': r.signatures,\n"
            "           'table': r.table()}, sys.stdout)\n")
    return _fresh(code)


def _failing(res, kinds):
    bad = {f: {k: c[k] for k in kinds if c[k]} for f, c in res["counts"].items()}
    bad = {f: v for f, v in bad.items() if v}
    lines = [res["table"]] + [f"[{f}] {sig} ({res['signatures'][f][sig]} cases): {e}"
                              for f, v in bad.items() for sig, ex in res["examples"][f].items()
                              if sig.split()[0] in v for e in ex]
    return bad, "\n".join(lines)


def test_fuzzed_loaders_never_crash_hang_or_raise_other_than_valueerror(bounded_run):
    bad, why = _failing(bounded_run, ("crash", "hang", "other", "memory"))
    assert not bad, why
    assert all(sum(c.values()) == N_PER_FORMAT for c in bounded_run["counts"].values())


def test_fuzzed_loaders_never_accept_an_invalid_model(bounded_run):
    """Shards outside the directory, NaN weights, overlapping data, a config contradicting the
    weights, a non-object or bad-id generation config: an error (or an explicit warning)."""
    bad, why = _failing(bounded_run, ("accepted",))
    assert not bad, why


def test_signatures_group_like_outcomes(seeds):
    case = _case(seeds)
    sig = fuzz.signature
    assert sig(fuzz.Outcome(case, "other", "TypeError (load, schema.py:62): 'str' object")) == \
        "other TypeError (load, schema.py:62)"
    assert sig(fuzz.Outcome(case, "crash", "SIGSEGV")) == "crash SIGSEGV"
    assert sig(fuzz.Outcome(case, "clean", "ValueError (load): bad", named=False)) == \
        "unnamed ValueError (load)"
    assert sig(fuzz.Outcome(case, "clean", "ValueError (load): x.json: bad")) is None
    assert sig(fuzz.Outcome(case, "hang", "no result after 10 s")) == "hang"


def test_must_fail_judgement_of_a_context_length():
    old = {**fuzz.TINY}
    for bad in (0, 0.5, -1, "64", None, float("inf"), True):
        assert fuzz._config_must_fail(old, {**old, "max_position_embeddings": bad}), bad
    assert not fuzz._config_must_fail(old, {**old, "max_position_embeddings": 128})
