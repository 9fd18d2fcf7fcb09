"""``bench decode --isa avx2 --busy 1``: the laptop measurement anyone can reproduce here, side
by side with bitnet.cpp (a stand-in ``llama-bench`` here), and the automatic thread count under
load."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numba
import pytest

from bitnet_edu.bench import decode
from bitnet_edu import cpu_threads
from bitnet_edu.model.random import random_model

FAKE_LLAMA_BENCH = """\
#!{python}
# stands in for bitnet.cpp's llama-bench: records its arguments, prints two -o jsonl results
import json, sys
args = sys.argv[1:]
open({log!r}, "a").write(" ".join(args) + "\\n")
t = int(args[args.index("-t") + 1]) if "-t" in args else 2
for n_prompt, n_gen, ts in ((int(args[args.index("-p") + 1]), 0, [10.0, 30.0, 20.0]),
                            (0, int(args[args.index("-n") + 1]), [1.0, 2.0, 4.0])):
    print(json.dumps({{"model_type": "bitnet-b1.58 2B I2_S", "n_threads": t, "n_prompt": n_prompt,
                      "n_gen": n_gen, "avg_ts": sum(ts) / 3, "samples_ts": ts}}))
"""


def test_isa_busy_and_bitnet_cpp_rows_are_printed(tmp_path):
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "llama-bench"
    log = tmp_path / "calls.txt"
    exe.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable, log=str(log)))
    exe.chmod(0o755)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # given with --gguf: the bench does not write one
    out = subprocess.run(
        [sys.executable, "-m", "bitnet_edu.bench", "decode", "--layers", "1", "--prompt", "8",
         "--new", "3", "--threads", "1", "--head", "int8", "--isa", "avx2", "--busy", "1",
         "--repeats", "2", "--bitnet-cpp", str(tmp_path), "--gguf", str(gguf)],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    ours = [ln.split() for ln in lines if ln.startswith("bitnet_edu (")]
    assert len(ours) == 2 and all("avx2," in r for r in ours), out.stdout  # the ISA it ran
    assert sorted(int(r[r.index("int8)") + 1]) for r in ours) == [0, 1]   # idle, then busy
    assert all(float(r[-4]) > 0 and float(r[-3]) > 0 for r in ours)      # prefill, decode tok/s
    cpp = [ln.split() for ln in lines if ln.startswith("bitnet.cpp (")]
    assert len(cpp) == 2
    assert all(float(r[-4]) == 20.0 and float(r[-3]) == 2.0 for r in cpp)  # medians of samples
    ratios = [ln for ln in lines if ln.startswith("ours / bitnet.cpp")]
    assert [re.search(r"busy (\d)", r).group(1) for r in ratios] == ["0", "1"], out.stdout
    assert all(re.search(r"prefill \d+\.\d\dx, decode \d+\.\d\dx$", r) for r in ratios)
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and all(c.split() == ["-m", str(gguf), "-p", "8", "-n", "3", "-r",
                                                 "2", "-o", "jsonl", "-t", "1"] for c in calls)


def test_parse_llama_bench_and_thread_specs():
    text = "\n".join(["build: 01eb415 (96)", json.dumps(
        {"model_type": "m", "n_prompt": 128, "n_gen": 0, "avg_ts": 5.0, "samples_ts": [4, 9, 5]}),
        json.dumps({"model_type": "m", "n_prompt": 0, "n_gen": 64, "avg_ts": 2.0})])
    r = decode.parse_llama_bench(text)
    assert (r["prefill_tok_s"], r["decode_tok_s"], r["model_type"]) == (5.0, 2.0, "m")
    assert decode._threads("1,2,default") == [1, 2, decode.DEFAULT]


def test_isa_targets_compile_for_the_named_cpu():
    code = "from bitnet_edu.kernels.intrinsics import isa; print(isa())"
    for name in ("avx2", "avxvnni", "portable"):
        env = {**os.environ, **decode._isa_env(name)}
        assert env["BITNET_EDU_CACHE_DIR"].endswith(f"isa-{name}")
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120).stdout.split()
        assert got == [name]


def test_busy_program_is_seen_and_auto_threads_leave_its_core():
    with cpu_threads.busy_programs(1) as procs:
        time.sleep(0.3)
        seen = [cpu_threads.cpus_busy_elsewhere() for _ in range(20)]
    assert procs[0].poll() is not None  # ended with the block
    assert max(seen) >= 1  # the busy loop is always runnable


def test_auto_threads_follow_the_load(monkeypatch):
    m = random_model({**random_model_config(), "num_hidden_layers": 1})
    m.SMALL_MODEL_BYTES = 0  # count as a big model
    prev = numba.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for busy, want in ((0, min(prev, 2)), (1, 1), (5, 1)):
        monkeypatch.setattr(cpu_threads, "BUSY", cpu_threads.BusyCpus(keep=1))
        monkeypatch.setattr(cpu_threads, "cpus_busy_elsewhere", lambda b=busy: b)
        with m._numba_threads():
            assert numba.get_num_threads() == want
        m.threads = 2  # an explicit count is kept whatever the load
        with m._numba_threads():
            assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
        m.threads = None
    assert numba.get_num_threads() == prev


def test_busy_readings_keep_the_least_of_the_last_few(monkeypatch):
    readings = iter([0, 3, 1, 1, 1])
    monkeypatch.setattr(cpu_threads, "cpus_busy_elsewhere", lambda: next(readings))
    b = cpu_threads.BusyCpus(keep=3)
    assert [b.recent() for _ in range(5)] == [0, 0, 0, 1, 1]


def random_model_config() -> dict:
    return dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, max_position_embeddings=64)


@pytest.mark.parametrize("args", [["--env", "NO_VALUE"], ["--head", "int2"],
                                  ["--bitnet-cpp", "/nonexistent"]])
def test_bad_arguments_are_usage_errors(args):
    with pytest.raises(SystemExit):
        decode.main(args)


@pytest.mark.parametrize("given, want", [({}, "10000"), ({"GOMP_SPINCOUNT": "7"}, "7"),
                                         ({"OMP_WAIT_POLICY": "active"}, None)])
def test_openmp_spin_default_is_set_before_openmp_loads(given, want):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = ("import os, bitnet_edu.kernels, numba\n"
            "print(os.environ.get('GOMP_SPINCOUNT'), numba.config.THREADING_LAYER)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, **given}, timeout=120)
    assert out.stdout.split()[0] == str(want), out.stderr[-2000:]


def test_shape_rows_give_bytes_per_token_of_that_member():
    """``--shape falcon3-1b``: the row is that member's (its layers' 2-bit weights plus its untied
    int8 head are the bytes a decoded token reads), and a cut-down run says it is REDUCED."""
    from bitnet_edu.config import PRESETS
    out = subprocess.run(
        [sys.executable, "-m", "bitnet_edu.bench", "decode", "--shape", "falcon3-1b", "--layers",
         "1", "--prompt", "4", "--new", "2", "--threads", "1", "--repeats", "1",
         "--head", "int8"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "falcon3-1b shape with 1 of its 18 layers (REDUCED)" in out.stdout, out.stdout
    row = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("bitnet_edu (")]
    assert len(row) == 1
    mb = float(row[0][-1])
    c = PRESETS["falcon3-1b"]
    h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * c["head_dim"]
    q = c["num_attention_heads"] * c["head_dim"]
    ternary = (h * (2 * q + 2 * kv) + 3 * h * i) / 4          # 2 bits per weight, one layer
    head = c["vocab_size"] * h                                 # int8 codes of the untied head
    assert ternary + head <= mb * 1e6 <= 1.05 * (ternary + head) + 1e5


def test_embedding_shape_row_is_its_embedding_throughput_against_the_kernel_ceiling():
    """``--shape bitnet-embedding-0.6b``: no decoding; the row's prefill column is embedding
    tok/s, the line after it the texts/s and the kernel's multiply-add ceiling from the same
    run, and the bytes are the ternary layers only (no head is read)."""
    from bitnet_edu.config import PRESETS
    out = subprocess.run(
        [sys.executable, "-m", "bitnet_edu.bench", "decode", "--shape", "bitnet-embedding-0.6b",
         "--layers", "1", "--prompt", "16", "--threads", "1", "--repeats", "2",
         "--head", "int8"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bitnet-embedding-0.6b shape with 1 of its 28 layers (REDUCED)" in out.stdout
    row = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("bitnet_edu (")]
    assert len(row) == 1 and float(row[0][-4]) == 0.0  # decode tok/s: not a thing
    tok_s, mb = float(row[0][-5]), float(row[0][-1])
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("embedding, ")]
    assert len(line) == 1, out.stdout
    m = re.search(r": ([\d.]+) tok/s = ([\d.]+) texts/s of 16 tokens; the kernel ran ([\d.]+) "
                  r"GMAC/s on 16 tokens in this run -> at most ([\d.]+) tok/s .*: (\d+)% of it",
                  line[0])
    assert m, line[0]
    assert abs(float(m.group(1)) - tok_s) < 0.2 and abs(float(m.group(2)) - tok_s / 16) < 0.01
    assert float(m.group(4)) > 0 and "targets," not in out.stdout
    c = PRESETS["bitnet-embedding-0.6b"]
    h, i = c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    ternary = (h * (2 * q + 2 * kv) + 3 * h * i) / 4  # 2 bits per weight, one layer; no head
    assert ternary <= mb * 1e6 <= 1.05 * ternary + 1e5


def test_unknown_shape_is_a_usage_error():
    with pytest.raises(SystemExit):
        decode.main(["--shape", "gpt-5"])
