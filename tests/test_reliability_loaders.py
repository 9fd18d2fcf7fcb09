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


# --- defect 4: sizes from a config, bounded before anything is allocated ------------------------

def _hf_dir(tmp_path, name="m", **kw):
    m = _tiny(**kw)
    d = tmp_path / name
    write_hf_checkpoint(d, m.config, m.iter_checkpoint())
    return m, d


def _edit_config(d, **changes):
    p = d / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg))


@pytest.mark.parametrize("key,value", [
    ("num_hidden_layers", 0), ("num_hidden_layers", -1), ("num_hidden_layers", 2**31),
    ("num_hidden_layers", True), ("num_hidden_layers", 2.0), ("num_hidden_layers", "2"),
    ("hidden_size", 10**7), ("num_attention_heads", 0), ("num_key_value_heads", None),
    ("max_position_embeddings", 2**31), ("vocab_size", [64]), ("head_dim", 0),
    ("rope_theta", 0), ("rope_theta", -1.0), ("rope_theta", "big"), ("rope_theta", None),
    ("rms_norm_eps", -1e-5), ("rms_norm_eps", [1]), ("tie_word_embeddings", "yes"),
    ("eos_token_id", "x"), ("bos_token_id", -3)])
def test_absurd_config_values_are_refused_naming_the_key(key, value):
    """Defects 4, 5, 10: a size <= 0, > 2**20, a bool or a non-integer, a rope_theta <= 0 /
    NaN / string, an rms_norm_eps < 0 or a list is a ValueError naming the key (it loaded, or
    raised ZeroDivisionError / TypeError / a Numba TypingError later)."""
    with pytest.raises(ValueError, match=key):
        BitNetConfig.from_dict({**TINY, key: value})


def test_nan_rope_theta_and_eps_are_refused():
    """Defect 5: NaN (which JSON writes as NaN and Python reads back) loaded silently."""
    for key in ("rope_theta", "rms_norm_eps"):
        with pytest.raises(ValueError, match=key):
            BitNetConfig(**{**TINY, key: float("nan")})
        with pytest.raises(ValueError, match=key):
            BitNetConfig(**{**TINY, key: float("inf")})


def test_huge_layer_count_fails_fast_from_the_file_contents(tmp_path):
    """Defect 4: num_hidden_layers=10**6 cost 14 s and 2.6 GB before failing (2**31 never
    returned); the safetensors header says how many layers there are."""
    import time
    _, d = _hf_dir(tmp_path)
    _edit_config(d, num_hidden_layers=10**6)
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"config.json: num_hidden_layers=1000000 but the weight "
                                         r"files hold tensors of 2 layer"):
        load_model(d, progress=False)
    assert time.perf_counter() - t < 2


def test_gguf_context_length_does_not_size_the_rope_tables(tmp_path):
    """Defect 4: max_position_embeddings / GGUF context_length sized the RoPE tables at load
    (2**31 asked for 8 GiB); they now grow with the context used, and a claim above 2**24 is
    refused."""
    m = _tiny(max_position_embeddings=2**24)
    assert len(m._cos) == 0
    a = m.logits([1, 2, 3])
    assert 3 <= len(m._cos) <= 64 and m._cos.shape == m._sin.shape
    m.forward(list(range(1, 60)) * 2)  # grows to 118 rows, same values for the first rows
    assert len(m._cos) >= 118
    np.testing.assert_array_equal(m.logits([1, 2, 3]), a)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        _tiny(max_position_embeddings=2**31)


# --- defect 5: silent wrong results --------------------------------------------------------------

@pytest.mark.parametrize("head", ["float32", "int8", "int4"])
@pytest.mark.parametrize("fast", [True, False])
def test_a_nan_hidden_state_gives_nan_logits(head, fast):
    """Defect 5: the fused absmax was compiled with fastmath nnan (and Numba's max drops a NaN),
    so a NaN norm weight became int8 garbage and finite logits shifted by ~3.  Decision: the
    positions whose hidden state is not finite get NaN logits, with a RuntimeWarning, for every
    head mode and both code paths."""
    m = random_model({**TINY, "hidden_size": 128, "num_attention_heads": 4}, seed=0,
                     kernel="naive", head=head)
    m.fast = fast
    m.layers[1].attn_sub_norm[3] = np.nan
    with pytest.warns(RuntimeWarning, match="not finite"):
        out = m.logits([1, 2, 3])
    assert np.isnan(out).all()


def test_fused_absmax_propagates_nan():
    """Defect 5: the fused activation quantizer's scale is NaN for a NaN row (it was finite)."""
    from bitnet_edu.model import fused
    x = np.ones((2, 300), np.float32)
    x[1, 200] = np.nan
    _, s = fused.rmsnorm_quant(x, np.ones(300, np.float32), 1e-5)
    assert np.isfinite(s[0]) and np.isnan(s[1])
    _, s1 = fused.rmsnorm_quant_1(x[1:], np.ones(300, np.float32), 1e-5)
    assert np.isnan(s1[0])


def _rewrite_header(path, edit):
    """Apply ``edit(header dict)`` to a safetensors file's JSON header (data unchanged)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def test_non_finite_float_tensor_is_refused_naming_it(tmp_path):
    """Defect 5: the loader never checked float tensors for finiteness (a NaN norm weight
    shifted the logits silently); now a ValueError names the file and the tensor (HF and
    GGUF, plain tensors and the row-block embedding)."""
    from bitnet_edu.formats.gguf import to_gguf
    for target in ("model.layers.1.input_layernorm.weight", "model.embed_tokens.weight"):
        m = _tiny()
        if target.startswith("model.embed"):
            m.head.table[5, 3] = np.inf
        else:
            m.layers[1].input_layernorm[0] = np.nan
        d = tmp_path / f"hf_{target[:12]}"
        write_hf_checkpoint(d, m.config, m.iter_checkpoint())
        with pytest.raises(ValueError, match=rf"model.safetensors: tensor '{target}' has 1 "
                                             r"non-finite"):
            load_model(d, progress=False)
    m = random_model({**TINY, "hidden_size": 128, "intermediate_size": 256,
                      "num_attention_heads": 4}, kernel="naive", head="float32")
    m.layers[0].ffn_sub_norm[7] = np.nan
    path = tmp_path / "nan.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # placeholder vocabulary
        to_gguf(m, path, progress=False)
    with pytest.raises(ValueError, match=r"nan.gguf: tensor 'blk.0.ffn_sub_norm.weight' has 1"):
        load_model(path, progress=False)


def test_config_with_fewer_layers_than_the_checkpoint_is_refused(tmp_path):
    """Defect 5: a config saying 1 layer over a 2-layer HF checkpoint silently loaded 1 layer
    (the GGUF path already refused it)."""
    _, d = _hf_dir(tmp_path)
    _edit_config(d, num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"config.json: num_hidden_layers=1 but the weight files "
                                         r"hold tensors of 2 layers"):
        load_model(d, progress=False)


def test_unknown_extra_tensors_load_with_a_warning_naming_them(tmp_path):
    """Defect 5: tensors that are not part of the model were dropped without a word."""
    from bitnet_edu.formats.safetensors import read_safetensors, write_safetensors
    m, d = _hf_dir(tmp_path)
    f = d / "model.safetensors"
    t = {k: np.array(v) for k, v in read_safetensors(f, raw_bf16=True).items()}
    t["model.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    write_safetensors(f, t, bf16={k for k in t if t[k].dtype == np.uint16})
    with pytest.warns(UserWarning, match="'model.rotary_emb.inv_freq'"):
        loaded = load_model(d, progress=False, head="float32")
    np.testing.assert_allclose(loaded.logits([1, 2]), m.logits([1, 2]), rtol=0.05, atol=0.05)


def test_overlapping_safetensors_ranges_are_refused(tmp_path):
    """Defect 5: two tensors pointing at the same bytes were accepted."""
    _, d = _hf_dir(tmp_path)
    f = d / "model.safetensors"

    def overlap(h):
        a, b = "model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"
        h[b]["data_offsets"] = list(h[a]["data_offsets"])
    _rewrite_header(f, overlap)
    with pytest.raises(ValueError, match="overlap"):
        load_model(d, progress=False)


@pytest.mark.parametrize("entry", [
    {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [-1, -2], "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [2], "data_offsets": ["0", 8]},
    {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]},
    {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}])
def test_malformed_safetensors_entries_are_clean_errors(tmp_path, entry):
    """Defect 5 / 10: header entries of the wrong JSON types raised TypeError (or reshaped to
    a wrong shape); each is now a ValueError naming the file and tensor."""
    from bitnet_edu.formats.safetensors import safetensors_header, write_safetensors
    f = tmp_path / "x.safetensors"
    write_safetensors(f, {"a": np.ones(2, np.float32)})
    _rewrite_header(f, lambda h: h.update(a=entry))
    with pytest.raises(ValueError, match=r"x.safetensors: tensor 'a'"):
        safetensors_header(f)


def test_json_that_is_not_an_object_is_a_clean_error(tmp_path):
    """Defect 10 (loader side): a JSON list as config.json or generation_config.json raised
    AttributeError; now a ValueError naming the file."""
    _, d = _hf_dir(tmp_path)
    (d / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="generation_config.json: expected a JSON object"):
        load_model(d, progress=False)
    (d / "generation_config.json").write_text('{"eos_token_id": "end"}')
    with pytest.raises(ValueError, match="generation_config.json: config eos_token_id"):
        load_model(d, progress=False)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json: expected a JSON object"):
        load_model(d, progress=False)


# --- defect 7: shard paths from the index file ---------------------------------------------------

def _sharded(tmp_path):
    """An HF directory whose weights are one shard named in model.safetensors.index.json."""
    from bitnet_edu.formats.safetensors import safetensors_header
    _, d = _hf_dir(tmp_path)
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    names = safetensors_header(d / "model-00001-of-00001.safetensors")[0]
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def _point_index_at(d, target):
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    index["weight_map"] = {n: target for n in index["weight_map"]}
    p.write_text(json.dumps(index))


def test_shards_inside_the_directory_load(tmp_path):
    """Defect 7 (the allowed case): a relative shard name, also in a subfolder."""
    d = _sharded(tmp_path)
    assert load_model(d, progress=False).config.num_hidden_layers == 2
    (d / "sub").mkdir()
    (d / "model-00001-of-00001.safetensors").rename(d / "sub" / "w.safetensors")
    _point_index_at(d, "sub/w.safetensors")
    assert load_model(d, progress=False).config.num_hidden_layers == 2


def test_shard_paths_cannot_leave_the_model_directory(tmp_path):
    """Defect 7: ``../outside/x.safetensors`` loaded from outside the directory and
    ``/etc/passwd`` was opened, its first bytes showing up in the error.  Now each is refused
    before any file is opened, and the message holds no file contents."""
    d = _sharded(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (d / "model-00001-of-00001.safetensors").rename(outside / "x.safetensors")
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-CONTENTS " * 8)
    (d / "link.safetensors").symlink_to(outside / "x.safetensors")
    (d / "sub").mkdir()
    (d / "sub" / "up").symlink_to(outside)
    for target, why in [("../outside/x.safetensors", "outside the model directory"),
                        (str(outside / "x.safetensors"), "outside the model directory"),
                        (str(secret), "outside the model directory"),
                        ("/etc/passwd", "outside the model directory"),
                        ("link.safetensors", "link to a file outside"),
                        ("sub/up/x.safetensors", "link to a file outside"),
                        ("missing.safetensors", "does not exist")]:
        _point_index_at(d, target)
        with pytest.raises(ValueError, match=why) as e:
            load_model(d, progress=False)
        assert "SECRET" not in str(e.value) and "root:" not in str(e.value)
    for bad_map in ([], {"a": 3}, {}):
        p = d / "model.safetensors.index.json"
        p.write_text(json.dumps({"weight_map": bad_map}))
        with pytest.raises(ValueError, match="index.json"):
            load_model(d, progress=False)


def test_hub_cache_snapshot_links_into_blobs_are_allowed(tmp_path):
    """Defect 7 (the hub cache): a snapshot's files are links to ``../../blobs/<hash>``, which
    must keep loading."""
    _, d = _hf_dir(tmp_path)
    repo = tmp_path / "models--x--y"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in d.iterdir():
        blob = repo / "blobs" / f"h_{f.name}"
        f.rename(blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    assert load_model(snap, progress=False).config.num_hidden_layers == 2


# --- defect 11: the exported GGUF and bitnet.cpp agree on bos; the FFN activation is written ----

@pytest.fixture(scope="module")
def default_gguf(tmp_path_factory):
    """The shipped default model exported with to_gguf (its tokenizer.json has no
    post-processor, which made to_gguf write add_bos_token = false)."""
    from bitnet_edu.formats.gguf import to_gguf
    m = load_model(progress=False, head="float32")
    path = tmp_path_factory.mktemp("gguf") / "default.gguf"
    to_gguf(m, path, progress=False)
    return m, path


def test_to_gguf_writes_add_bos_token_and_relu2(default_gguf):
    """Defect 11: add_bos_token was false for the shipped model (bitnet.cpp then diverged
    from our greedy output at token 0); now true whenever a bos id exists, and
    ``<arch>.hidden_activation = "relu2"`` is written."""
    from bitnet_edu.formats.gguf import GGUFReader
    m, path = default_gguf
    assert m.tokenizer.encode("Hello").ids[:1] != [m.config.bos_token_id]  # no post-processor
    meta = GGUFReader(path).metadata
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.bos_token_id"] == m.config.bos_token_id
    assert meta["bitnet-b1.58.hidden_activation"] == "relu2"


def test_gguf_prompt_gets_bos_exactly_as_the_flag_says(default_gguf, tmp_path, monkeypatch):
    """Defect 11: our GGUF loader honours add_bos_token as llama.cpp does (true: bos in front
    of a text prompt, once; false: none), and greedy output from the GGUF equals the HF
    model's; the HF path is unchanged (bos added when the tokenizer does not)."""
    from bitnet_edu.formats.gguf import export, to_gguf
    from bitnet_edu.formats.gguf.container import T_BOOL, Value
    from bitnet_edu.model.generation import _prompt_ids
    m, path = default_gguf
    bos, text = m.config.bos_token_id, "Once upon a time"
    plain = m.tokenizer.encode(text).ids
    assert m.add_bos_token is None and _prompt_ids(m, text)[0] == [bos] + plain
    g = load_model(path, progress=False, head="float32")
    assert g.add_bos_token is True and _prompt_ids(g, text)[0] == [bos] + plain
    assert g.generate(text, 8) == m.generate(text, 8)

    def no_bos(*a, **kw):
        meta = real(*a, **kw)
        meta["tokenizer.ggml.add_bos_token"] = Value(T_BOOL, False)
        return meta
    real = export.tokenizer_to_gguf
    monkeypatch.setattr(export, "tokenizer_to_gguf", no_bos)
    to_gguf(m, tmp_path / "nobos.gguf", progress=False)
    n = load_model(tmp_path / "nobos.gguf", progress=False, head="float32")
    assert n.add_bos_token is False and _prompt_ids(n, text)[0] == plain


def test_gguf_with_another_hidden_activation_is_refused(tmp_path, monkeypatch):
    """Defect 11: a GGUF saying its FFN is SiLU is not silently run as ReLU²."""
    from bitnet_edu.formats.gguf import checkpoint, export, to_gguf
    from bitnet_edu.formats.gguf.container import T_STRING, Value
    m = random_model({**TINY, "hidden_size": 128, "intermediate_size": 256,
                      "num_attention_heads": 4}, kernel="naive", head="float32")

    def silu(config, **kw):
        meta = real(config, **kw)
        meta["bitnet-b1.58.hidden_activation"] = Value(T_STRING, "silu")
        return meta
    real = checkpoint.gguf_model_metadata
    monkeypatch.setattr(export, "gguf_model_metadata", silu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        to_gguf(m, tmp_path / "silu.gguf", progress=False)
    with pytest.raises(ValueError, match="hidden_activation='silu'"):
        load_model(tmp_path / "silu.gguf", progress=False)


# --- found by the fuzz harness: every loader error a ValueError naming the file ----------------

def test_fuzz_findings_are_clean_errors_naming_the_file(tmp_path):
    """Defects 5 / 10 (fuzz findings): a non-object quantization_config raised AttributeError,
    a deeply nested safetensors header RecursionError, a null shard name TypeError, a
    tokenizer.json whose post-processor names a missing token a Rust panic at the first
    prompt; an index listing a tensor that no shard holds loaded silently."""
    _, d = _hf_dir(tmp_path, "q")
    _edit_config(d, quantization_config=0.5)
    with pytest.raises(ValueError, match="config.json: quantization_config=0.5"):
        load_model(d, progress=False)

    f = tmp_path / "deep.safetensors"
    text = b"[" * 100000 + b"]" * 100000
    f.write_bytes(len(text).to_bytes(8, "little") + text)
    from bitnet_edu.formats.safetensors import safetensors_header
    with pytest.raises(ValueError, match="deep.safetensors: corrupt safetensors JSON"):
        safetensors_header(f)

    d = _sharded(tmp_path / "idx")
    p = d / "model.safetensors.index.json"
    good = json.loads(p.read_text())
    for wm, why in [({**good["weight_map"], "model.norm.weight": None}, "not a file name"),
                    ({**good["weight_map"], "model.extra.weight": "model-00001-of-00001"
                      ".safetensors"}, "no shard holds it"),
                    ({k: v for k, v in good["weight_map"].items() if k != "model.norm.weight"},
                     "not in its weight_map")]:
        p.write_text(json.dumps({"weight_map": wm}))
        with pytest.raises(ValueError, match=why):
            load_model(d, progress=False)
    p.write_text(json.dumps(good))

    from tokenizers import Tokenizer, models, processors
    tok = Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))
    tok.post_processor = processors.TemplateProcessing(
        single="<nope> $A", special_tokens=[("<nope>", 5)])
    tok.save(str(d / "tokenizer.json"))
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["post_processor"]["special_tokens"] = {}  # the template names a token it lacks
    (d / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="tokenizer.json: the tokenizer cannot encode"):
        load_model(d, progress=False)


def test_gguf_metadata_of_the_wrong_type_is_a_clean_error(tmp_path, monkeypatch):
    """Defect 10 (fuzz finding): an array where a string belongs (general.architecture,
    tokenizer.ggml.model) raised numpy's "truth value of an array is ambiguous"."""
    from bitnet_edu.formats.gguf import checkpoint, export, to_gguf
    from bitnet_edu.formats.gguf.container import T_ARRAY, T_INT32, Value
    m = random_model({**TINY, "hidden_size": 128, "intermediate_size": 256,
                      "num_attention_heads": 4}, kernel="naive", head="float32")
    real = checkpoint.gguf_model_metadata
    for key in ("general.architecture", "bitnet-b1.58.hidden_activation"):
        def bad(config, key=key, **kw):
            meta = real(config, **kw)
            meta[key] = Value(T_ARRAY, np.zeros(3, np.int32), T_INT32)
            return meta
        monkeypatch.setattr(export, "gguf_model_metadata", bad)
        path = tmp_path / f"{key}.gguf"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            to_gguf(m, path, progress=False)
        with pytest.raises(ValueError, match=rf"{key}.gguf: .*{key}="):
            load_model(path, progress=False)
