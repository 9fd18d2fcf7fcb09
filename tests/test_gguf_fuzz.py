"""Fuzz the GGUF reader: thousands of mutated files must only ever raise a clean ValueError.

Mutations: byte xor, interesting bytes, 64-bit integers (lengths/counts/offsets), inserted and
deleted bytes, truncation.  Any other exception type (IndexError, struct.error, MemoryError,
OverflowError, RecursionError, UnicodeError from a library...) fails the test.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bitnet_edu.gguf import GGML_I2_S, GGUFReader, read_gguf_checkpoint

from test_gguf import small_model_file
from test_gguf_model import write_model_gguf

U64 = [0, 1, 3, 31, 2**31, 2**32 - 1, 2**32, 2**40, 2**63, 2**64 - 1]


def mutations(size: int, header: int):
    """Lists of mutations; half of the positions fall in the header (metadata + tensor infos)."""
    pos = st.one_of(st.integers(0, max(header - 1, 0)), st.integers(0, size))
    one = st.one_of(
        st.tuples(st.just("xor"), pos, st.integers(1, 255)),
        st.tuples(st.just("set"), pos, st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])),
        st.tuples(st.just("u64"), pos, st.sampled_from(U64)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=9)),
        st.tuples(st.just("delete"), pos, st.integers(1, 17)),
        st.tuples(st.just("truncate"), pos, st.just(0)),
    )
    return st.lists(one, min_size=1, max_size=4)


def mutate(blob: bytes, ops) -> bytes:
    b = bytearray(blob)
    for op, p, arg in ops:
        p = p % (len(b) + 1)
        if op == "xor" and p < len(b):
            b[p] ^= arg
        elif op == "set" and p < len(b):
            b[p] = arg
        elif op == "u64":
            b[p:p + 8] = int(arg).to_bytes(8, "little")
        elif op == "insert":
            b[p:p] = arg
        elif op == "delete":
            del b[p:p + arg]
        elif op == "truncate":
            del b[p:]
    return bytes(b)


def read_everything(path):
    r = GGUFReader(path)
    for name, t in r.tensors.items():
        if t.ggml_type == GGML_I2_S:
            r.i2s(name)
        else:
            r.float32(name)
    return r


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "small.gguf"
    small_model_file(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzzm") / "model.gguf"
    write_model_gguf(path)
    return path


def _check(path, blob, ops, reader):
    bad = path.with_name("mutant.gguf")
    bad.write_bytes(mutate(blob, ops))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. an all-zero linear after a mutation
        try:
            reader(bad)
        except ValueError:
            pass  # GGUFError or another clean ValueError


def test_mutants_of_a_small_file_raise_only_valueerror(small_file):
    blob = small_file.read_bytes()
    header = GGUFReader(small_file).data_offset

    @settings(max_examples=2000, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutations(len(blob), header))
    def run(ops):
        _check(small_file, blob, ops, read_everything)

    run()


def test_mutants_of_a_model_file_raise_only_valueerror(model_file):
    """The whole checkpoint path: container, config, tokenizer, name and shape checks."""
    blob = model_file.read_bytes()
    header = GGUFReader(model_file).data_offset

    @settings(max_examples=800, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutations(len(blob), header))
    def run(ops):
        _check(model_file, blob, ops, lambda p: read_gguf_checkpoint(p, progress=False))

    run()


def test_unmutated_files_read_cleanly(small_file, model_file):
    read_everything(small_file)
    cfg, weights, tok = read_gguf_checkpoint(model_file, progress=False)
    assert cfg["num_hidden_layers"] == 1 and np.isfinite(weights["model.norm.weight"]).all()
