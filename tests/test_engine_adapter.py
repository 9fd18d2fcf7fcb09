"""The Numba engine runs LoRA adapters in PEFT's format (bitnet_edu.formats.peft,
bitnet_edu.model.lora): logits against the torch model with the adapter (ours and PEFT's own),
on every forward path, and a clear ValueError for every adapter it cannot run.

A tiny random BitNetLM is exported to an HF directory; the torch model the adapter goes on is
that directory read back (``load_bitnet_lm``), so torch and the engine hold the same ternary
weights and bf16-rounded norms and embedding.  Seconds in all.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from bitnet_edu.formats.hf import write_hf_checkpoint  # noqa: E402
from bitnet_edu.formats.peft import read_peft_adapter  # noqa: E402
from bitnet_edu.formats.safetensors import (bf16_to_float32, float32_to_bf16,  # noqa: E402
                                            read_safetensors, write_safetensors)
from bitnet_edu.model import lora as engine_lora  # noqa: E402
from bitnet_edu.model.loading import load_model  # noqa: E402
from bitnet_edu.model.segments import forward_segments  # noqa: E402
from bitnet_edu.train import lora as L  # noqa: E402
from bitnet_edu.train.export_hf import canonical_tensors, hf_config  # noqa: E402
from bitnet_edu.train.import_hf import load_bitnet_lm  # noqa: E402
from bitnet_edu.train.model import BitNetLM, ModelConfig  # noqa: E402

TINY = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32)
IDS = [3, 17, 42, 5, 9, 33, 60, 1, 22, 8, 14, 50]
# engine vs torch, float32: the same ternary sums and int8 activations; the float parts (norms,
# attention, the low-rank matmuls) sum in other orders, ~1e-6 relative, so logits agree to ~4e-6
# -- except where an activation lands within that rounding of an int8 tie (x.5 after scaling):
# the two round it apart by one code and that position moves by ~1e-3 (seen with B ~ N(0, 0.2)
# at one position of twelve; the shipped-model test in test_lora.py sees the same).  So: at
# most one position in ten beyond ATOL, none beyond 0.02, and the same greedy tokens.
ATOL = 2e-5


def assert_logits_close(got, want):
    per_pos = np.abs(got - want).max(-1)
    assert np.mean(per_pos <= ATOL) >= 0.9 and per_pos.max() < 0.02, per_pos
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(HF directory of a tiny random model, the torch BitNetLM read back from it)."""
    torch.manual_seed(0)
    m = BitNetLM(ModelConfig(**TINY))
    with torch.no_grad():  # less trivial than its init: varied norms, a larger embedding
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
            elif "embed" in name:
                p.mul_(30)
    d = tmp_path_factory.mktemp("tiny_hf")
    write_hf_checkpoint(d, hf_config(m, 0), canonical_tensors(m))
    return d, load_bitnet_lm(d)


def _randomize_b(model, seed=2, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in L.lora_layers(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * scale)


def _torch_logits(model, ids=IDS):
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    out = out.logits if hasattr(out, "logits") else out
    return out[0].float().numpy()


def _ours(exported, tmp_path, cfg=None, seed=2):
    """Our torch LoRA on the base, random B, saved: (torch model, adapter dir)."""
    _, lm = exported
    m = L.add_lora(copy.deepcopy(lm), cfg or L.LoraConfig(r=4, lora_alpha=8))
    _randomize_b(m, seed)
    return m, L.save_adapter(m, tmp_path / "adapter")


@pytest.fixture
def adapted(exported, tmp_path):
    """(torch model with a LoRA on all seven projections, its adapter dir, the engine with it)"""
    m, adir = _ours(exported, tmp_path)
    return m, adir, load_model(exported[0], adapter=adir, head="float32")


# --- the numbers -------------------------------------------------------------------------------

def test_prefill_and_decode_match_torch_with_the_adapter(exported, adapted):
    m, _, eng = adapted
    want = _torch_logits(m)
    assert eng.adapter is not None and len(eng.adapter.modules) == 7 * TINY["n_layers"]
    got = eng.logits(IDS)
    base = load_model(exported[0], head="float32").logits(IDS)
    assert np.abs(want - base).max() > 0.1  # the adapter changes the answer ...
    assert_logits_close(got, want)  # ... as torch does
    cache = eng.new_cache(len(IDS))  # a prefill of 5, then one token at a time
    steps = [eng.forward(IDS[:5], cache)] + [eng.forward([t], cache) for t in IDS[5:]]
    assert_logits_close(np.concatenate(steps), want)


def test_reference_path_matches_fast_path_and_traces_the_low_rank_terms(adapted):
    m, _, eng = adapted
    fast = eng.logits(IDS)
    trace = []
    ref = eng.logits(IDS, trace=trace)  # a trace runs the NumPy reference path
    assert_logits_close(ref, fast)
    layer = trace[1]
    assert {"lora_qkv", "lora_o", "lora_gate_up", "lora_down"} <= set(layer)
    c = eng.config
    assert layer["lora_qkv"].shape == (len(IDS), (c.num_attention_heads + 2 *
                                                  c.num_key_value_heads) * c.head_dim)
    eng.fast = False
    assert_logits_close(eng.logits(IDS), fast)


def test_forward_batch_rows_equal_each_sequence_alone(adapted):
    _, _, eng = adapted
    prompts, nxt = [IDS[:3], IDS[:7], IDS[2:3]], [5, 40, 11]

    def caches():
        out = []
        for p in prompts:
            k = eng.new_cache(16)
            eng.forward(p, k)
            out.append(k)
        return out
    batch = eng.forward_batch(nxt, caches())
    alone = [eng.forward([t], k)[0] for t, k in zip(nxt, caches())]
    for b, a in zip(batch, alone):
        assert np.array_equal(b, a)  # bit for bit: the low-rank term is per row too


def test_forward_segments_equal_each_continuation_alone(exported, adapted):
    _, adir, _ = adapted
    eng = load_model(exported[0], adapter=adir, head="int8")  # per-row head: exact rows
    cache = eng.new_cache(16)
    eng.forward(IDS[:6], cache)
    segs = [[7, 8, 9], [10], [11, 12]]
    got = forward_segments(eng, segs, cache)
    for s, g in zip(segs, got):
        cache.length = 6
        assert np.array_equal(g, eng.forward(s, cache))


def test_no_adapter_is_bit_identical_and_a_zero_b_adapter_changes_nothing(exported, tmp_path):
    d, lm = exported
    eng = load_model(d, head="float32")
    before = eng.logits(IDS)
    assert eng.adapter is None
    m = L.add_lora(copy.deepcopy(lm), L.LoraConfig(r=4, lora_alpha=8))  # B = 0: PEFT's init
    eng.load_adapter(L.save_adapter(m, tmp_path / "zero"))
    assert np.array_equal(eng.logits(IDS), before)
    eng.remove_adapter()
    assert eng.adapter is None and np.array_equal(eng.logits(IDS), before)


@pytest.mark.parametrize("cfg", [
    dict(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"]),
    dict(r=4, lora_alpha=4, target_modules=["o_proj", "down_proj", "up_proj"],
         use_rslora=True),
    dict(r=3, lora_alpha=8, target_modules=["k_proj", "gate_proj", "down_proj"],
         layers_to_transform=[1]),
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                            "up_proj", "down_proj"],
         rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 6}, alpha_pattern={"k_proj": 3}),
    dict(r=2, lora_alpha=4, target_modules=r".*\.layers\.0\.mlp\.(gate|up)_proj"),
], ids=["qv", "rslora", "layers_to_transform", "rank_alpha_pattern", "regex"])
def test_an_adapter_written_by_peft_itself_matches_peft(exported, tmp_path, cfg):
    d, lm = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(L.HFCausalLM(copy.deepcopy(lm)),
                                 peft.LoraConfig(task_type="CAUSAL_LM", **cfg))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(str(tmp_path))
    eng = load_model(d, adapter=tmp_path, head="float32")
    with torch.no_grad():
        want = pm(input_ids=torch.tensor([IDS]))[0].float().numpy()
    assert_logits_close(eng.logits(IDS), want)
    n_peft = sum(1 for n, _ in pm.named_parameters() if "lora_A" in n)
    assert len(eng.adapter.modules) == n_peft


def test_scaling_rank_and_targets_are_read_as_peft_defines_them(exported, tmp_path):
    _, adir = _ours(exported, tmp_path, L.LoraConfig(r=4, lora_alpha=6,
                                                     target_modules=("q_proj", "down_proj")))
    a = read_peft_adapter(adir, 2)
    assert sorted(a.modules) == [(0, "down_proj"), (0, "q_proj"), (1, "down_proj"), (1, "q_proj")]
    assert all(s == 1.5 for _, _, s in a.modules.values())
    cfg = json.loads((adir / "adapter_config.json").read_text())
    (adir / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))
    assert all(s == 3.0 for _, _, s in read_peft_adapter(adir).modules.values())  # 6 / sqrt(4)


def test_bf16_f16_weights_and_the_default_adapter_name_in_keys(exported, adapted, tmp_path):
    """bf16 and f16 tensors widen to float32 exactly: the same logits as float32 files holding
    the rounded values; keys with PEFT's adapter name (``lora_A.default.weight``) read alike."""
    m, adir, eng = adapted
    w = {k: np.array(v) for k, v in read_safetensors(adir / "adapter_model.safetensors").items()}

    def logits(kind, tensors, **kw):
        d = tmp_path / kind
        shutil.copytree(adir, d)
        write_safetensors(d / "adapter_model.safetensors", tensors, **kw)
        return load_model(exported[0], adapter=d, head="float32").logits(IDS)
    bf = {k: bf16_to_float32(float32_to_bf16(v)) for k, v in w.items()}
    assert np.array_equal(logits("bf16", w, bf16=set(w)), logits("bf16_in_f32", bf))
    f16 = {k: v.astype(np.float16) for k, v in w.items()}
    assert np.array_equal(logits("f16", f16),
                          logits("f16_in_f32", {k: v.astype(np.float32) for k, v in f16.items()}))
    named = {k.replace(".weight", ".default.weight"): v for k, v in w.items()}
    assert np.array_equal(logits("default", named), eng.logits(IDS))


def test_a_shipped_adapter_loads_by_name(exported, adapted, tmp_path, monkeypatch):
    _, adir, eng = adapted
    shipped = tmp_path / "shipped"
    shutil.copytree(adir, shipped / "mine")
    monkeypatch.setattr(engine_lora, "ADAPTERS_DIR", shipped)
    assert engine_lora.shipped_adapters() == ["mine"]
    got = load_model(exported[0], adapter="mine", head="float32")
    assert got.adapter.name == "mine" and np.array_equal(got.logits(IDS), eng.logits(IDS))
    with pytest.raises(ValueError, match=r"no adapter named 'nope'.*\['mine'\]"):
        load_model(exported[0], adapter="nope")
    with pytest.raises(ValueError, match="no such adapter directory"):
        load_model(exported[0], adapter=str(tmp_path / "missing" / "dir"))


def test_the_shipped_chat_adapter_runs_on_the_default_model():
    if "chat" not in engine_lora.shipped_adapters():
        pytest.skip("bitnet_edu/adapters/chat is not shipped yet")
    eng = load_model(adapter="chat")
    ids = [0] + eng.encode("Who was the first king of Israel?")[:12]
    assert np.isfinite(eng.logits(ids)).all()
    assert "chat" in repr(eng) and eng.memory_report()["LoRA adapter (float32)"] > 0


# --- refusals ---------------------------------------------------------------------------------

def _edit_config(adir, **changes):
    cfg = json.loads((adir / "adapter_config.json").read_text())
    cfg.update(changes)
    (adir / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change,match", [
    (dict(use_dora=True), "use_dora"),
    (dict(bias="all"), "bias='all'"),
    (dict(bias="lora_only"), "bias"),
    (dict(lora_bias=True), "lora_bias"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(fan_in_fan_out=True), "fan_in_fan_out"),
    (dict(peft_type="PREFIX_TUNING"), "only LoRA"),
    (dict(peft_type=None), "only LoRA"),
    (dict(r=0), "r must be a positive"),
    (dict(r=8), "rank r=8"),
    (dict(target_modules=["q_proj"]), "do not target"),
    (dict(target_modules="("), "regular expression"),
    (dict(layers_to_transform=[0]), "do not target"),
])
def test_configs_it_cannot_run_are_refused(adapted, exported, change, match):
    _, adir, _ = adapted
    _edit_config(adir, **change)
    with pytest.raises(ValueError, match=match) as e:
        load_model(exported[0], adapter=adir)
    assert "adapter_config.json" in str(e.value) or "adapter_model" in str(e.value)


def _rewrite(adir, fn):
    f = adir / "adapter_model.safetensors"
    w = {k: np.array(v) for k, v in read_safetensors(f).items()}
    write_safetensors(f, fn(w))


Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.mark.parametrize("case,match", [
    ("no_config", "adapter_config.json: missing"),
    ("bad_json", "not valid JSON"),
    ("no_weights", "adapter_model.safetensors: missing"),
    ("bin_only", "pickle"),
    ("truncated", "truncated|corrupt"),
    ("not_a_dir", "not a directory"),
    ("a_without_b", "has lora_A but no lora_B"),
    ("wrong_in", r"do not fit the model's q_proj"),
    ("wrong_out", r"do not fit the model's q_proj"),
    ("unknown_key", "unexpected tensor"),
    ("wrong_block", "no mlp.q_proj"),
    ("layer_out_of_range", "layer 5 out of range"),
    ("int_dtype", "must be F32, F16 or BF16"),
    ("nan", "NaN"),
    ("two_names", "several adapter names"),
])
def test_broken_adapter_files_are_a_value_error_naming_the_file(adapted, exported, tmp_path,
                                                                case, match):
    _, adir, _ = adapted
    f = adir / "adapter_model.safetensors"
    if case == "no_config":
        (adir / "adapter_config.json").unlink()
    elif case == "bad_json":
        (adir / "adapter_config.json").write_text("{not json")
    elif case == "no_weights":
        f.unlink()
    elif case == "bin_only":
        f.rename(adir / "adapter_model.bin")
    elif case == "truncated":
        f.write_bytes(f.read_bytes()[:200])
    elif case == "not_a_dir":
        adir = f
    elif case == "a_without_b":
        _rewrite(adir, lambda w: {k: v for k, v in w.items() if k != Q_B})
    elif case == "wrong_in":
        _rewrite(adir, lambda w: {**w, Q_A: np.zeros((4, 31), np.float32)})
    elif case == "wrong_out":
        _rewrite(adir, lambda w: {**w, Q_B: np.zeros((33, 4), np.float32)})
    elif case == "unknown_key":
        _rewrite(adir, lambda w: {**w, "base_model.model.lm_head.lora_A.weight": w[Q_A]})
    elif case == "wrong_block":
        _rewrite(adir, lambda w: {**w, Q_A.replace("self_attn", "mlp"): w[Q_A]})
    elif case == "layer_out_of_range":
        _rewrite(adir, lambda w: {**w, Q_A.replace("layers.0", "layers.5"): w[Q_A],
                                  Q_B.replace("layers.0", "layers.5"): w[Q_B]})
    elif case == "int_dtype":
        _rewrite(adir, lambda w: {**w, Q_A: w[Q_A].astype(np.int32)})
    elif case == "nan":
        _rewrite(adir, lambda w: {**w, Q_A: np.full_like(w[Q_A], np.nan)})
    elif case == "two_names":
        _rewrite(adir, lambda w: {**{k: v for k, v in w.items() if k != Q_A},
                                  Q_A.replace(".weight", ".other.weight"): w[Q_A]})
    with pytest.raises(ValueError, match=match) as e:
        load_model(exported[0], adapter=adir)
    assert str(adir) in str(e.value)


def test_an_adapter_for_another_model_shape_is_refused(adapted, tmp_path):
    _, adir, _ = adapted
    from bitnet_edu.model.random import random_model
    other = random_model("2b4t", seed=0, hidden_size=64, intermediate_size=96,
                         num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                         vocab_size=64)
    with pytest.raises(ValueError, match="another model"):
        other.load_adapter(adir)
    assert other.adapter is None


# --- the tools ---------------------------------------------------------------------------------

def test_cli_takes_adapter_and_names_a_missing_one(exported, capsys):
    from bitnet_edu import cli
    assert cli.main(["generate", "--model", str(exported[0]), "--adapter", "no-such-adapter",
                     "hi"]) == 2
    assert "no adapter named 'no-such-adapter'" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(exported[0]), "--adapter", "x", "o.gguf"]) == 2


def test_bench_decode_adapter_lines():
    from bitnet_edu.bench import decode
    r = {"engine": "bitnet_edu (vnni avx2, head int8)", "threads": 2, "busy": 0,
         "prefill_tok_s": 100.0, "decode_tok_s": 20.0, "peak_rss_gb": 1.0, "cold_start_s": 1.0,
         "adapter": "random-r8", "adapter_ranks": [8], "adapter_modules": 210,
         "adapter_bytes": 2**20, "ternary_bytes": 100 * 2**20, "prefill_tok_s_adapter": 90.0,
         "decode_tok_s_adapter": 19.0}
    rows = decode.adapter_rows(r)
    assert [x["decode_tok_s"] for x in rows] == [20.0, 19.0] and rows[1]["with_adapter"]
    assert decode.bench_adapter("3", load_model().config).n_params > 0


def test_lora_delta_kernel_equals_its_numpy_reference():
    """The Numba low-rank kernel (both twins) against LoraGroup.delta_reference, for every group
    of a random adapter on a subset of projections (ragged: unadapted columns give 0)."""
    from bitnet_edu.config import BitNetConfig
    cfg = BitNetConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=32)
    ad = engine_lora.random_adapter(cfg, r=4, targets=("q_proj", "v_proj", "up_proj", "down_proj"),
                                    scale=0.3)
    rng = np.random.default_rng(5)
    for layer in ad.layers:
        for group in (layer.qkv, layer.o, layer.gate_up, layer.down):
            if group is None:
                continue
            for t in (1, 7):
                xn = rng.standard_normal((t, group.a.shape[1])).astype(np.float32)
                got, want = group.delta(xn), group.delta_reference(xn)
                assert got.shape == want.shape and got.dtype == np.float32
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
