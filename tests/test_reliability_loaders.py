"""Reliability of the loaders, config, kernels metadata and engine inputs (no crash, no silent
wrong answer on any input).  Each test's docstring names the defect it guards (the numbered
list of the reliability issue: 1 foreign KV cache, 2 inconsistent Packed, 4 config sizes,
5 silent wrong results, 7 shard paths, 11 GGUF add_bos_token / hidden_activation)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import bitnet_edu
from bitnet_edu import kernels
from bitnet_edu.config import BitNetConfig
from bitnet_edu.formats.hf import write_hf_checkpoint
from bitnet_edu.model import random_model
from bitnet_edu.model.layers import KVCache
from bitnet_edu.model.loading import load_model

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2)


def _tiny(kernel="naive", **kw):
    return random_model({**TINY, **kw}, seed=0, kernel=kernel, head="float32")


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(bitnet_edu.__file__))}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=env)


# --- defect 1: a KV cache made for another model ------------------------------------------------

def test_foreign_kv_cache_is_a_clean_error_not_a_segfault():
    """Defect 1: the issue's example (a 4-layer, 1-head, head_dim 8 cache given to the default
    model, repeatedly) exited with signal 11; now every call is a ValueError."""
    r = _run("""
        from bitnet_edu.model.loading import load_model
        from bitnet_edu.model.layers import KVCache
        m = load_model()
        c = KVCache(4, 1, 8, 256)
        for _ in range(5):
            try:
                m.forward(list(range(1, 9)), c)
            except ValueError as e:
                msg = str(e)
            else:
                raise SystemExit("no error")
        print("OK", msg)
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "OK" in r.stdout and "does not fit the model" in r.stdout


@pytest.mark.parametrize("dims", [(1, 2, 8), (2, 1, 8), (2, 2, 4), (3, 2, 8)])
def test_every_cache_dimension_is_checked(dims):
    """Defect 1: layers, kv heads and head_dim each must match the model."""
    m = _tiny()
    with pytest.raises(ValueError, match="does not fit the model"):
        m.forward([1, 2, 3], KVCache(*dims, 16))


def test_cache_dtype_contiguity_capacity_and_length_are_checked():
    """Defect 1: a cache whose arrays were swapped for another dtype, a non-contiguous view, a
    capacity attribute larger than its arrays or a length beyond it is refused."""
    m = _tiny()
    for mutate in (lambda c: setattr(c, "k", c.k.astype(np.float64)),
                   lambda c: setattr(c, "v", np.asfortranarray(c.v)),
                   lambda c: setattr(c, "capacity", 10**6),
                   lambda c: setattr(c, "length", 17),
                   lambda c: setattr(c, "length", -1)):
        c = m.new_cache(16)
        mutate(c)
        with pytest.raises(ValueError):
            m.forward([1], c)
    with pytest.raises(ValueError, match="KVCache"):
        m.forward([1], {"k": 0})
    with pytest.raises(ValueError, match="whole number"):
        KVCache(2, 0, 8, 16)
    ok = m.new_cache(16)
    assert m.forward([1, 2], ok).shape == (2, 64) and ok.length == 2


def test_float_token_ids_are_refused_by_forward():
    """Defect 5 (silent wrong result): forward truncated 1.7 to token 1."""
    with pytest.raises(ValueError, match="integers"):
        _tiny().forward([1.7, 2.0])


# --- defect 2: Packed metadata that does not match its arrays -----------------------------------

@pytest.mark.parametrize("name", kernels.available())
def test_inconsistent_packed_is_refused_by_every_kernel(name):
    """Defect 2: ``dataclasses.replace(packed, out=1)`` (or a larger ``out``, another ``k``)
    crashed 5 of 6 kernels or returned uninitialised memory; now construction refuses it."""
    k = kernels.get(name)
    rng = np.random.default_rng(1)
    w = rng.integers(-1, 2, (40, 300), dtype=np.int8)
    x = rng.integers(-127, 128, (3, 300), dtype=np.int8)
    p = k.pack(w)
    for change in (dict(out=1), dict(out=41), dict(out=4000), dict(k=1), dict(k=3000),
                   dict(arrays=p.arrays[:1] + (p.arrays[0][:5],)), dict(arrays=()),
                   dict(arrays=tuple(a.astype(np.int32) for a in p.arrays)),
                   dict(out=True), dict(k=-300), dict(kernel=None)):
        with pytest.raises(ValueError):
            bad = dataclasses.replace(p, **change)
            k.matmul(bad, x[:, :bad.k])
    want = x.astype(np.int32) @ w.T.astype(np.int32)
    np.testing.assert_array_equal(k.matmul(p, x), want)  # the original is untouched


@pytest.mark.parametrize("name", kernels.available())
def test_packed_is_immutable_and_checked_per_call(name):
    """Defect 2: a Packed is frozen with read-only arrays; an array reshaped in place after
    construction is caught on the next checked call."""
    k = kernels.get(name)
    w = np.random.default_rng(2).integers(-1, 2, (16, 256), dtype=np.int8)
    p = k.pack(w)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.out = 1
    with pytest.raises(ValueError, match="read-only"):
        p.arrays[0][...] = 0
    a = p.arrays[0]
    a.shape = (a.shape[0] // 2, a.shape[1] * 2) if a.shape[0] % 2 == 0 else a.shape
    with pytest.raises(ValueError, match="does not match"):
        k.matmul(p, np.ones(256, np.int8))
