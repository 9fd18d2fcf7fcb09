"""The config-driven block and the BitNet family's Llama-layout members against transformers.

Falcon3 1.58-bit and HF1BitLLM's Llama3-8B-1.58 are ``LlamaForCausalLM`` checkpoints with
``quantization_config: {"quant_method": "bitnet", ...}`` (linear class ``bitlinear``: the packed
uint8 ``[out/4, in]`` weights are the ternary codes and ``weight_scale`` is 1/absmean), SwiGLU,
no sub-norms, an untied float ``lm_head`` (docs/family.md).  The hub is unreachable here, so
each test writes a tiny checkpoint in exactly that layout (transformers' ``LlamaConfig`` and
``pack_weights``, ``safetensors``) and loads it with transformers as the oracle.

Oracle: ``from_pretrained(dtype=torch.float32)`` (bitlinear checkpoints load in float32, so
both sides do float32 arithmetic with exact integer sums; dynamo is disabled, as
docs/family.md says, or the first forward compiles for a minute).  Tolerance, as
tests/test_model.py: the median logit error below 1e-5 of the logit range, the worst below
1e-2 of it (a different float32 summation order may flip an int8 activation rounding at an
exact .5 now and then), the argmax equal at every position, and 16 greedy tokens equal.
"""

from __future__ import annotations

import json
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from bitnet_edu.config import MEMBERS, PRESETS, BitNetConfig
from bitnet_edu.formats.schema import expected_tensors, layer_norms
from bitnet_edu.model import fused
from bitnet_edu.model.layers import (gelu_tanh_glu, llama3_inv_freq, quantize_act, relu2_glu,
                                     rms_norm, rope_tables, silu_glu)

IDS = [0, 5, 17, 40, 100, 3, 9, 55, 200, 11, 7, 8]

# Odd on purpose: an explicit head_dim that is not hidden/heads (Falcon3 gives the key);
# GQA ratio 3 with a llama3 rope scaling whose interpolated band covers a real frequency.
LAYOUTS = {
    "falcon3": dict(vocab_size=203, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                    max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000042.0,
                    bos_token_id=11, eos_token_id=11, tie_word_embeddings=False),
    "llama3": dict(vocab_size=301, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                   rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=1, eos_token_id=2,
                   tie_word_embeddings=False,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64}),
    "falcon3_tied": dict(vocab_size=203, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000042.0,
                         bos_token_id=11, eos_token_id=11, tie_word_embeddings=True),
}
FALCON_QC = {"quant_method": "bitnet", "modules_to_not_convert": ["lm_head"]}
LLAMA_QC = {"quant_method": "bitnet", "modules_to_not_convert": None}  # HF1BitLLM's


# --- the checkpoint writer (the test's own code, as docs/family.md's recipe) -----------------

def write_llama_checkpoint(directory, layout: str, *, packed: bool = True, seed: int = 0,
                           scale_dtype: str = "bfloat16", quantization_config=None,
                           hub_style: bool | None = None) -> Path:
    """A tiny ``LlamaForCausalLM`` checkpoint in the family's on-disk layout.

    ``packed``: each ``*_proj.weight`` uint8 ``[out/4, in]`` (transformers' ``pack_weights`` of
    the absmean codes) and ``weight_scale = 1/absmean`` in ``scale_dtype`` (the real files:
    bf16, likely), everything else bf16, with a ``quant_method: bitnet`` config.  Otherwise the
    bf16 master weights with no quantization config (what the packed file was quantized from:
    the same seed gives the same ternary model).  ``hub_style``: the 4.x config keys
    (``rope_theta``, ``rope_scaling``, ``is_bitnet_config``) as the hub files, else
    transformers-5's ``rope_parameters`` (default: hub style for Falcon3).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations.bitnet import pack_weights

    kw = dict(LAYOUTS[layout])
    theta, scaling = kw.pop("rope_theta"), kw.pop("rope_scaling", None)
    cfg = LlamaConfig(hidden_act="silu", attention_bias=False, mlp_bias=False,
                      rope_parameters={"rope_type": "default", "rope_theta": theta,
                                       **(scaling or {})}, **kw)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.endswith("norm.weight"):
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            w = rng.standard_normal(shape)
        elif name == "lm_head.weight":
            w = 0.3 * rng.standard_normal(shape)
        else:
            w = rng.uniform(0.15, 0.4) * rng.standard_normal(shape)
        t = torch.from_numpy(w.astype(np.float32)).to(torch.bfloat16)
        if packed and name.endswith("_proj.weight"):
            m = t.float()  # quantize what the master file holds
            s = m.abs().mean().clamp(min=1e-5)
            codes = (m / s).round().clamp(-1, 1)
            tensors[name] = pack_weights(codes.clone()).contiguous()
            tensors[name + "_scale"] = (1.0 / s).reshape(1).to(getattr(torch, scale_dtype))
        else:
            tensors[name] = t.contiguous()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config.update(architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    config.pop("dtype", None)
    if hub_style if hub_style is not None else layout.startswith("falcon3"):
        rp = config.pop("rope_parameters")
        config["rope_theta"] = rp["rope_theta"]
        config["rope_scaling"] = None if rp["rope_type"] == "default" else \
            {k: v for k, v in rp.items() if k != "rope_theta"}
        config["is_bitnet_config"] = True
    if packed:
        qc = FALCON_QC if layout.startswith("falcon3") else LLAMA_QC
        config["quantization_config"] = dict(quantization_config or qc)
    (d / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return d


def _hf(directory):
    import torch
    import transformers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32).eval()


def _hf_logits(hf, ids):
    import torch
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float().numpy()


def _hf_greedy(hf, prompt, n=16):
    import torch
    with torch.no_grad():  # use_cache=False: its full forward is the oracle (tests/test_model.py)
        p = torch.tensor([prompt])
        return hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, use_cache=False)[0, len(prompt):]


def assert_close_logits(got, ref):
    err, scale = np.abs(got - ref), np.abs(ref).max()
    assert np.median(err) < 1e-5 * scale and err.max() < 1e-2 * scale, \
        (float(np.median(err) / scale), float(err.max() / scale))
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.fixture(scope="module")
def torch_oracle():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers' bitnet quantizer requires it
    import torch._dynamo
    before = torch._dynamo.config.disable
    torch._dynamo.config.disable = True  # the quantizer's @torch.compile: eager, same numbers
    yield torch
    torch._dynamo.config.disable = before


@pytest.fixture(scope="module", params=list(LAYOUTS))
def member(request, tmp_path_factory, torch_oracle):
    """(layout, engine on the packed file, engine on the master, transformers on the packed
    file, transformers on a float32-scale packed file: the master's own scales)."""
    from bitnet_edu.model.loading import load_model
    layout = request.param
    seed = zlib.crc32(layout.encode()) % 1000
    base = tmp_path_factory.mktemp(layout)
    packed = write_llama_checkpoint(base / "packed", layout, seed=seed)
    exact = write_llama_checkpoint(base / "packed32", layout, seed=seed, scale_dtype="float32")
    master = write_llama_checkpoint(base / "master", layout, seed=seed, packed=False)
    return dict(layout=layout, packed=load_model(packed), master=load_model(master),
                hf=_hf(packed), hf32=_hf(exact), dirs=(packed, exact, master))


# --- against transformers --------------------------------------------------------------------

def test_packed_logits_match_transformers(member):
    model, hf = member["packed"], member["hf"]
    cfg = model.config
    assert (cfg.hidden_act, cfg.sub_norms, cfg.linear_class) == ("silu", False, "bitlinear")
    assert model.layers[0].attn_sub_norm is None and model.layers[0].ffn_sub_norm is None
    assert (model.lm_head is model.head) == cfg.tie_word_embeddings
    got = model.logits(IDS)
    assert got.dtype == np.float32 and got.shape == (len(IDS), cfg.vocab_size)
    assert_close_logits(got, _hf_logits(hf, IDS))


def test_packed_greedy_16_tokens_match_transformers(member):
    model, hf = member["packed"], member["hf"]
    got = model.generate(IDS[:4], 16, stop=[])
    assert got == _hf_greedy(hf, IDS[:4]).tolist()
    assert len(set(got)) > 2  # not a degenerate fixture


def test_master_matches_transformers_on_its_packed_file(member):
    """The bf16 master, ternarized at load with absmean, is the packed model (scales exact)."""
    model, hf = member["master"], member["hf32"]
    assert model.config.linear_class == "autobitlinear"  # no quantization config: nothing to flip
    assert_close_logits(model.logits(IDS), _hf_logits(hf, IDS))
    assert model.generate(IDS[:4], 16, stop=[]) == _hf_greedy(hf, IDS[:4]).tolist()


def test_packed_and_master_hold_the_same_ternary_model(member):
    from bitnet_edu.formats.hf import read_hf_checkpoint
    packed, exact, master = member["dirs"]
    a, b = read_hf_checkpoint(exact)[1], read_hf_checkpoint(master)[1]
    c = read_hf_checkpoint(packed)[1]
    assert set(a) == set(b) == set(c)
    assert not any("sub_norm" in k for k in a)
    for k in a:
        if k.endswith("_proj.weight"):
            assert a[k].dtype == np.int8 and np.array_equal(a[k], b[k]), k
        elif k.endswith("_scale"):  # canonical absmean: the reciprocal inverted at load
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
            np.testing.assert_allclose(c[k], b[k], rtol=1e-2)  # bf16-rounded 1/absmean
        else:
            np.testing.assert_array_equal(a[k], b[k])


def test_fused_reference_cache_and_batch_paths_agree(member):
    model = member["packed"]
    fast = model.logits(IDS)
    model.fast = False
    try:
        ref = model.logits(IDS)
        tr = []
        model.logits(IDS[:3], trace=tr)
    finally:
        model.fast = True
    # The NumPy reference rounds some float32 steps in another order (norms, attention, exp):
    # an int8 activation may flip at an exact .5, and a flipped key moves every later position
    # through attention (seen: falcon3_tied from position 4 on, 2.7e-2 of the range, while the
    # fused path matches transformers to 2e-7).  The same argmax, within 5e-2 of the range.
    scale = np.abs(ref).max()
    assert np.abs(fast - ref).max() < 5e-2 * scale and (fast.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_array_equal(tr[1]["attn_sub_norm"], tr[1]["attn_out"])  # no sub-norm
    cache = model.new_cache(len(IDS))
    step = [model.forward(IDS[:5], cache)[-1]] + [model.forward([i], cache)[0] for i in IDS[5:]]
    assert_close_logits(np.stack(step), fast[4:])
    caches = [model.new_cache(8) for _ in range(3)]
    for k, n in zip(caches, (1, 3, 2)):
        model.forward(IDS[:n], k)
    singles = []
    for k, n in zip([model.new_cache(8) for _ in range(3)], (1, 3, 2)):
        model.forward(IDS[:n], k)
        singles.append(model.forward([IDS[7]], k)[0])
    np.testing.assert_array_equal(model.forward_batch([IDS[7]] * 3, caches), np.stack(singles))


def test_checkpoint_round_trip_and_bitlinear_writer(member, tmp_path):
    """to_checkpoint gives the canonical form back; write_hf_checkpoint writes the config's own
    linear class (bitlinear: 1/absmean scales) and transformers reads it as the same model."""
    from bitnet_edu.formats.hf import write_hf_checkpoint
    from bitnet_edu.model import BitNetModel
    model = member["packed"]
    cfg, w = model.to_checkpoint()
    assert set(w) == set(expected_tensors(model.config))
    assert ("lm_head.weight" in w) != model.config.tie_word_embeddings
    again = BitNetModel.from_checkpoint(cfg, w, head="float32")
    np.testing.assert_array_equal(again.logits(IDS[:5]), model.logits(IDS[:5]))
    out = write_hf_checkpoint(tmp_path / "out", cfg, w)
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["LlamaForCausalLM"]
    assert written["quantization_config"]["linear_class"] == "bitlinear"
    assert_close_logits(_hf_logits(_hf(out), IDS), _hf_logits(member["hf"], IDS))


def test_untied_head_modes(member):
    """The untied head is a Head like the tied one: float32 exact, int8/int4 quantized."""
    from bitnet_edu.model.loading import load_model
    model = member["packed"]
    if model.config.tie_word_embeddings:
        pytest.skip("tied")
    f32 = model.logits(IDS)
    assert model.lm_head.mode == model.head.mode == "float32"  # small table: auto = float32
    x = np.random.default_rng(0).standard_normal((4, model.config.hidden_size)).astype(np.float32)
    exact = model.lm_head.logits(x)
    np.testing.assert_array_equal(exact, x @ model.lm_head.table.T)
    for mode, tol in (("int8", 0.02), ("int4", 0.2)):
        m = load_model(member["dirs"][0], head=mode)
        assert m.lm_head.mode == m.head.mode == mode and m.lm_head is not m.head
        assert m.lm_head.nbytes < model.lm_head.nbytes / 3.5
        np.testing.assert_allclose(m.lm_head.logits(x), exact, atol=tol * np.abs(exact).max())
        got = m.logits(IDS)  # the embedding is quantized too: the whole model moves a little
        assert (got.argmax(1) == f32.argmax(1)).mean() >= 0.5


# --- what the semantics pin down -------------------------------------------------------------

def test_the_scale_reading_matters(member, tmp_path):
    """The same bytes read as autobitlinear (the scale multiplies) give other logits."""
    from bitnet_edu.model.loading import load_model
    if member["layout"] != "falcon3":
        pytest.skip("one layout is enough")
    src = member["dirs"][1]
    d = tmp_path / "flipped"
    d.mkdir()
    shutil.copy(src / "model.safetensors", d)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {**config["quantization_config"],
                                     "linear_class": "autobitlinear"}
    (d / "config.json").write_text(json.dumps(config))
    wrong = load_model(d).logits(IDS)
    right = member["packed"].logits(IDS)
    assert np.abs(wrong - right).max() > 0.1 * np.abs(right).max()


def test_llama3_rope_scaling_is_used_and_equals_transformers(torch_oracle):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    r = LAYOUTS["llama3"]["rope_scaling"]
    hf_cfg = LlamaConfig(hidden_size=96, num_attention_heads=6, max_position_embeddings=128,
                         rope_parameters={"rope_theta": 500000.0, **r})
    want = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")[0].numpy()
    plain = 1.0 / (500000.0 ** (np.arange(0, 16, 2, dtype=np.float32) / 16))
    got = llama3_inv_freq(plain, r)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    kinds = (got == plain) | np.isclose(got, plain / 8)
    assert kinds.sum() < len(got) and (got == plain).any() and np.isclose(got, plain / 8).any()
    c0, _ = rope_tables(8, 16, 500000.0)
    c1, _ = rope_tables(8, 16, 500000.0, BitNetConfig.from_dict(
        {"rope_theta": 500000.0, "rope_scaling": r}).rope_scaling)
    assert not np.allclose(c0, c1)


def test_modules_to_not_convert(tmp_path, torch_oracle):
    from bitnet_edu.model.loading import load_model
    ok = write_llama_checkpoint(tmp_path / "null", "falcon3",
                                quantization_config={"quant_method": "bitnet",
                                                     "modules_to_not_convert": None})
    assert load_model(ok).lm_head is not None
    for qc, msg in (({"quant_method": "bitnet", "modules_to_not_convert": ["model.embed"]},
                     "does not list 'lm_head'"),
                    ({"quant_method": "bitnet",
                      "modules_to_not_convert": ["lm_head", "model.layers.1.mlp.down_proj"]},
                     "keeps 'model.layers.1.mlp.down_proj' in float"),
                    ({"quant_method": "bitnet", "modules_to_not_convert": ["lm_head", "model.layers.*.mlp"]},
                     "in float"),
                    ({"quant_method": "bitnet", "modules_to_not_convert": "lm_head"},
                     "expected a list"),
                    ({"quant_method": "bitnet", "linear_class": "bitlinar"}, "bitlinar")):
        d = tmp_path / str(zlib.crc32(json.dumps(qc).encode()))
        d.mkdir()
        shutil.copy(ok / "model.safetensors", d)
        config = json.loads((ok / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, "quantization_config": qc}))
        with pytest.raises(ValueError, match=msg):
            load_model(d)


def test_a_zero_bitlinear_scale_is_refused(tmp_path, torch_oracle):
    import torch
    from safetensors.torch import load_file, save_file
    from bitnet_edu.model.loading import load_model
    d = write_llama_checkpoint(tmp_path, "falcon3")
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.1.self_attn.o_proj.weight_scale"] = torch.zeros(1, dtype=torch.bfloat16)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="o_proj.weight_scale' is 0"):
        load_model(d)


# --- the fused glue against its NumPy references ---------------------------------------------

@pytest.mark.parametrize("t", [1, 5])
def test_fused_ffn_middles_equal_their_references(t):
    rng = np.random.default_rng(t)
    f = 96
    gu = (3 * rng.standard_normal((t, 2 * f))).astype(np.float32)
    gu[0, :4] = [-100.0, -88.5, 0.0, 90.0]  # exp overflow and sigmoid's ends
    sg, su = np.float32(0.7), np.float32(1.3)
    w = (1 + 0.2 * rng.standard_normal(f)).astype(np.float32)
    eps = 1e-5
    gate, up = gu[:, :f] * sg, gu[:, f:] * su
    one = t == 1
    # relu2 without a sub-norm: exact (the same float32 steps)
    xq, xs = fused.FFN_QUANT["relu2", False, one](gu, sg, su)
    rq, rs = quantize_act(relu2_glu(gate, up))
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(xs, rs)
    # silu: exp may differ from NumPy's by an ulp, so an int8 code may move by one at a .5
    for sub in (False, True):
        fn = fused.FFN_QUANT["silu", sub, one]
        xq, xs = fn(gu, sg, su, w, eps) if sub else fn(gu, sg, su)
        act = silu_glu(gate, up)
        rq, rs = quantize_act(rms_norm(act, w, eps) if sub else act)
        assert np.abs(xq.astype(int) - rq).max() <= 1 and (xq != rq).mean() < 0.01
        np.testing.assert_allclose(xs, rs, rtol=1e-6)
    # gelu_tanh (BitNet-embedding-270M's FFN) with the down projection's own norm: tanh may
    # differ by an ulp too
    xq, xs = fused.gelu_tanh_rmsnorm_quant(gu, sg, su, w, eps)
    rq, rs = quantize_act(rms_norm(gelu_tanh_glu(gate, up), w, eps))
    assert np.abs(xq.astype(int) - rq).max() <= 1 and (xq != rq).mean() < 0.01
    np.testing.assert_allclose(xs, rs, rtol=1e-6)
    # the attention output without a sub-norm: plain per-token int8
    a = rng.standard_normal((t, 64)).astype(np.float32)
    for fn in (fused.quantize_rows_int8, fused.quantize_rows_int8_1):
        q, s = fn(a)
        rq, rs = quantize_act(a)
        np.testing.assert_array_equal(q, rq)
        np.testing.assert_array_equal(s, rs)


def test_silu_glue_carries_nan():
    gu = np.ones((1, 8), np.float32)
    gu[0, 1] = np.nan
    xq, xs = fused.silu_quant_1(gu, np.float32(1), np.float32(1))
    assert np.isnan(xs[0])


# --- config, schema, presets, random models ----------------------------------------------------

def test_presets_are_the_published_shapes():
    c = BitNetConfig.preset("falcon3-10b")
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim, c.vocab_size) == (3072, 23040, 40, 12, 4, 256,
                                                                 131072)
    assert (c.rope_theta, c.rms_norm_eps, c.max_position_embeddings) == (1000042.0, 1e-6, 32768)
    assert (c.hidden_act, c.sub_norms, c.linear_class, c.tie_word_embeddings) == \
        ("silu", False, "bitlinear", False)
    assert [BitNetConfig.preset(n).num_hidden_layers
            for n in ("falcon3-1b", "falcon3-3b", "falcon3-7b")] == [18, 22, 28]
    ll = BitNetConfig.preset("llama3-8b-1.58")
    assert (ll.vocab_size, ll.head_dim, ll.rope_theta, ll.rope_scaling, ll.eos_token_id) == \
        (128256, 128, 500000.0, None, 128009)
    assert 7.9e9 < ll.n_params < 8.1e9 and 10.2e9 < c.n_params < 10.4e9
    b = BitNetConfig.preset("2b4t")
    assert (b.hidden_act, b.sub_norms, b.linear_class, b.rope_scaling) == \
        ("relu2", True, "autobitlinear", None)
    assert set(MEMBERS) <= set(PRESETS)


@pytest.mark.parametrize("name", [n for n in PRESETS])
def test_every_preset_round_trips(name):
    c = BitNetConfig.preset(name)
    again = BitNetConfig.from_dict(c.to_dict())
    again.extra = {}
    assert again == c
    assert BitNetConfig.from_dict(again.to_dict()).to_dict() == c.to_dict()


def test_fields_from_hub_style_and_transformers_5_configs():
    hub = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2,
           "intermediate_size": 96, "num_hidden_layers": 1, "vocab_size": 10,
           "hidden_act": "silu", "rope_theta": 1000042.0, "rope_scaling": None,
           "quantization_config": {"quant_method": "bitnet", "modules_to_not_convert": ["lm_head"]}}
    c = BitNetConfig.from_dict(hub)
    assert (c.sub_norms, c.linear_class, c.rope_theta, c.rope_scaling) == \
        (False, "bitlinear", 1000042.0, None)
    r = LAYOUTS["llama3"]["rope_scaling"]
    v5 = {**hub, "rope_parameters": {"rope_theta": 5e5, **r}}
    del v5["rope_theta"], v5["rope_scaling"]
    c5 = BitNetConfig.from_dict(v5)
    assert c5.rope_theta == 5e5 and c5.rope_scaling == {**r, "original_max_position_embeddings": 64}
    c4 = BitNetConfig.from_dict({**hub, "rope_theta": 5e5, "rope_scaling": r})
    assert c4.rope_scaling == c5.rope_scaling
    assert BitNetConfig.from_dict(c5.to_dict()).rope_scaling == c5.rope_scaling
    auto = BitNetConfig.from_dict({**hub, "quantization_config": {
        "quant_method": "bitnet", "linear_class": "autobitlinear"}})
    assert auto.linear_class == "autobitlinear"
    bitnet = BitNetConfig.from_dict({**hub, "architectures": ["BitNetForCausalLM"]})
    assert bitnet.sub_norms
    # 2B4T's own file and a config without architectures keep the sub-norms
    assert BitNetConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4,
                                   "num_key_value_heads": 4}).sub_norms
    plain = BitNetConfig(sub_norms=False)
    assert plain.to_dict()["architectures"] == ["LlamaForCausalLM"]
    assert BitNetConfig.from_dict(plain.to_dict()).sub_norms is False


@pytest.mark.parametrize("kw, msg", [
    (dict(hidden_act="gelu"), "hidden_act"), (dict(hidden_act=3), "hidden_act"),
    (dict(linear_class="bitlinar"), "linear_class"), (dict(sub_norms="no"), "sub_norms"),
    (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 0, "low_freq_factor": 1,
                        "high_freq_factor": 4, "original_max_position_embeddings": 8192}),
     "factor"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                        "high_freq_factor": 1, "original_max_position_embeddings": 8192}),
     "high_freq_factor"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                        "high_freq_factor": 4, "original_max_position_embeddings": 8.5}),
     "original_max"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": float("nan"), "low_freq_factor": 1,
                        "high_freq_factor": 4, "original_max_position_embeddings": 8192}),
     "factor"),
])
def test_absurd_values_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        BitNetConfig(**kw)


def test_other_rope_types_are_refused():
    for r in ({"rope_type": "linear", "factor": 2.0}, {"rope_type": "yarn"}):
        with pytest.raises(ValueError, match="rope type"):
            BitNetConfig.from_dict({"rope_scaling": r})
    with pytest.raises(ValueError, match="factor"):
        BitNetConfig.from_dict({"rope_scaling": {"rope_type": "llama3"}})


def test_schema_and_counts_follow_the_block():
    c = BitNetConfig.preset("falcon3-1b", num_hidden_layers=2)
    names = expected_tensors(c)
    assert "lm_head.weight" in names and not any("sub_norm" in n for n in names)
    assert layer_norms(c) == ("input_layernorm", "post_attention_layernorm")
    counts = c.param_counts()
    total = sum(int(np.prod(s)) for n, s in names.items() if not n.endswith("_scale"))
    assert counts["total"] == total and counts["norms"] == 2 * 2 * 2048 + 2048


@pytest.mark.parametrize("name", ["falcon3-1b", "llama3-8b-1.58"])
def test_random_member_models_run(name):
    from bitnet_edu.model.random import random_model
    m = random_model(name, num_hidden_layers=1, hidden_size=128, intermediate_size=256,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=96)
    assert m.layers[0].ffn_sub_norm is None and m.lm_head is not m.head
    assert m.ffn_activation == "silu"
    fast = m.logits([1, 2, 3])
    m.fast = False
    np.testing.assert_allclose(m.logits([1, 2, 3]), fast, atol=1e-3 * np.abs(fast).max())
    assert m.memory_report()["total"] > sum(L.nbytes for L in m.layers) + m.head.nbytes


def test_2b4t_silu_case_study_runs_fast_and_differs():
    """Lesson 04's deliberately wrong model (silu on 2B4T) now runs on the fused path too; the
    fused and reference paths agree for it, and switching back restores the numbers."""
    from bitnet_edu.model.random import random_model
    m = random_model("2b4t", num_hidden_layers=1, hidden_size=64, intermediate_size=128,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=64,
                     head="float32")
    base = m.logits([1, 5, 9])
    m.ffn_activation = "silu"
    wrong = m.logits([1, 5, 9])
    m.fast = False
    np.testing.assert_allclose(m.logits([1, 5, 9]), wrong, atol=1e-3 * np.abs(wrong).max())
    m.fast, m.ffn_activation = True, "relu2"
    assert not np.allclose(base, wrong)
    np.testing.assert_array_equal(m.logits([1, 5, 9]), base)


def test_tokenizer_config_add_bos_token_decides_the_leading_bos(tmp_path):
    """``add_bos_token`` in tokenizer_config.json (transformers honours it): false means no bos
    in front of a text prompt even though config.json names one (Falcon3 names
    <|endoftext|>); true or absent keep the engine's rule (bos unless the tokenizer adds it)."""
    pytest.importorskip("torch")
    from bitnet_edu import load_model
    from bitnet_edu.model.generation import _prompt_ids
    from tiny_checkpoint import write_tiny_checkpoint
    d = write_tiny_checkpoint(tmp_path / "ck", num_hidden_layers=1)
    tc = d / "tokenizer_config.json"
    base = json.loads(tc.read_text())
    bos = load_model(d).config.bos_token_id
    for flag, first in ((False, False), (True, True), (None, True)):
        tc.write_text(json.dumps({**base, **({} if flag is None else {"add_bos_token": flag})}))
        m = load_model(d)
        assert m.add_bos_token is flag
        ids, _ = _prompt_ids(m, "Hello world")
        assert (ids[0] == bos) is first, (flag, ids[:3])
        assert (m.embed("Hello world", normalize=False) is not None)
    tc.write_text(json.dumps({**base, "add_bos_token": "yes"}))
    with pytest.raises(ValueError, match="add_bos_token must be true or false"):
        load_model(d)
