"""One model-shape type: BitNetConfig, its presets and parameter counts, and who uses them.

``energy``, ``memory``, the kernel benchmark, the kernel-race widget and training all describe a
model with :class:`bitnet_edu.config.BitNetConfig`; this file checks the old entry points
(``energy.Shape``, ``train.ModelConfig``, the two NumPy ``rms_norm``) still behave as before.
"""

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bitnet_edu import bitlinear, energy, memory, norm
from bitnet_edu.config import LINEAR_KINDS, PRESETS, SHAPE_KEYS, BitNetConfig
from bitnet_edu.model import layers
from bitnet_edu.model.checkpoint import expected_tensors

PACKAGE = Path(__file__).resolve().parent.parent / "bitnet_edu"
TWO_B = dict(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
             num_attention_heads=20, num_key_value_heads=5, head_dim=128,
             max_position_embeddings=4096, rope_theta=500000.0)
SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2)


# --- presets --------------------------------------------------------------------------------

def test_2b4t_preset_and_defaults_are_the_published_config():
    cfg = BitNetConfig.preset("2b4t")
    assert {k: getattr(cfg, k) for k in TWO_B} == TWO_B
    assert cfg.eos_ids == [128001, 128009] and cfg.tie_word_embeddings and cfg.n_rep == 4
    # the defaults are the same shape (one end-of-turn id, as before)
    assert {k: getattr(BitNetConfig(), k) for k in TWO_B} == TWO_B
    assert BitNetConfig().eos_ids == [128001]
    # what model/random.py does with a preset name
    assert BitNetConfig(**{**PRESETS["2b4t"], "num_hidden_layers": 2}) == \
        BitNetConfig.preset("2B4T", num_hidden_layers=2)


def test_preset_overrides_and_unknown_name():
    cfg = BitNetConfig.preset("2b4t", num_hidden_layers=2, vocab_size=1000)
    assert (cfg.num_hidden_layers, cfg.vocab_size, cfg.hidden_size) == (2, 1000, 2560)
    with pytest.raises(ValueError, match="unknown preset 'gpt2'.*2b4t"):
        BitNetConfig.preset("gpt2")
    assert isinstance(PRESETS["2b4t"], dict)  # plain kwargs, not configs


def test_llama_comparison_presets():
    for name, (h, f, n, heads, kv) in {"llama2-7b": (4096, 11008, 32, 32, 32),
                                       "llama2-13b": (5120, 13824, 40, 40, 40),
                                       "llama2-70b": (8192, 28672, 80, 64, 8)}.items():
        c = BitNetConfig.preset(name)
        assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (h, f, n)
        assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (heads, kv, 128)
        assert c.vocab_size == 32000 and not c.tie_word_embeddings


def test_the_2b4t_numbers_are_written_only_in_config():
    """The modules that used to repeat the 2B4T shape now read it from the presets."""
    numbers = {2560, 6912, 128256, 500000}
    files = ["memory.py", "energy.py", "bench/kernels.py", "widgets/kernel_race.py",
             *(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "train").glob("*.py"))]
    found = []
    for rel in files:
        for node in ast.walk(ast.parse((PACKAGE / rel).read_text())):
            if isinstance(node, ast.Constant) and type(node.value) in (int, float) \
                    and node.value in numbers:
                found.append(f"{rel}:{node.lineno}: {node.value}")
    assert not found, found
    assert "128256" in (PACKAGE / "config.py").read_text()


def test_to_dict_round_trip_and_hf_keys():
    cfg = BitNetConfig.preset("2b4t", extra={"torch_dtype": "bfloat16"})
    d = cfg.to_dict()
    assert d["model_type"] == "bitnet" and d["architectures"] == ["BitNetForCausalLM"]
    assert d["torch_dtype"] == "bfloat16" and d["rope_theta"] == 500000.0
    back = BitNetConfig.from_dict(d)
    assert back.to_dict() == d and {k: getattr(back, k) for k in TWO_B} == TWO_B
    d["eos_token_id"].append(7)  # a copy: the config's list is untouched
    assert cfg.eos_token_id == [128001, 128009]


# --- shapes and parameter counts --------------------------------------------------------------

def test_2b4t_parameter_counts():
    c = BitNetConfig.preset("2b4t").param_counts()
    assert c["linear"] == 2_084_044_800 and c["embedding"] == 328_335_360
    assert c["norms"] == 30 * (3 * 2560 + 6912) + 2560 and c["lm_head"] == 0
    assert c["total"] == 2_412_820_480 == BitNetConfig.preset("2b4t").n_params
    assert c["scales"] == 210  # one absmean scale per linear tensor
    assert sum(c[k] for k in LINEAR_KINDS) == c["linear"]
    assert c["k_proj"] == c["v_proj"] == 30 * 640 * 2560  # 5 kv heads of 128
    cfg = BitNetConfig.preset("2b4t")
    assert cfg.linear_params == c["linear"] and cfg.head_params == c["embedding"]
    assert cfg.kv_values_per_position == 2 * 30 * 5 * 128


@pytest.mark.parametrize("kw", [SMALL, {**SMALL, "tie_word_embeddings": False},
                                {**SMALL, "head_dim": 32}])  # head_dim * heads != hidden
def test_counts_match_the_tensor_schema(kw):
    cfg = BitNetConfig(**kw)
    c = cfg.param_counts()
    shapes = expected_tensors(cfg)
    assert c["total"] + c["scales"] == sum(int(np.prod(s)) for s in shapes.values())
    assert c["lm_head"] == (0 if cfg.tie_word_embeddings else 100 * 64)
    for kind, (out, inp) in cfg.linear_shapes().items():
        name = next(n for n in shapes if n.endswith(f".{kind}.weight"))
        assert shapes[name] == (out, inp)
        assert c[kind] == cfg.num_hidden_layers * out * inp


def test_memory_uses_the_config_counts():
    cfg = BitNetConfig(**SMALL)
    counts = cfg.param_counts()
    assert memory.param_counts(cfg) == {k: counts[k] for k in memory.param_counts(cfg)}
    assert list(memory.param_counts()) == ["embedding", *LINEAR_KINDS, "norms", "lm_head"]
    assert memory.count_summary(cfg)["total"] == cfg.n_params
    assert memory.count_summary()["n_linear_tensors"] == 210
    assert memory.BITNET_2B4T == {k: TWO_B.get(k, True) for k in SHAPE_KEYS}


def test_engine_n_params_uses_the_config():
    from bitnet_edu.model.random import random_model

    m = random_model(dict(SMALL, vocab_size=256, hidden_size=256, intermediate_size=256,
                          num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1))
    assert m.n_params == sum(int(np.prod(s)) for s in expected_tensors(m.config).values())


def test_matrix_shapes_feed_the_kernel_benchmark_and_widget():
    groups = BitNetConfig.preset("2b4t").matrix_shapes()
    assert groups == {(2560, 2560): ("q_proj", "o_proj"), (640, 2560): ("k_proj", "v_proj"),
                      (6912, 2560): ("gate_proj", "up_proj"), (2560, 6912): ("down_proj",)}
    from bitnet_edu.bench.kernels import SHAPES_2B4T

    assert SHAPES_2B4T == [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]
    pytest.importorskip("ipywidgets")
    from bitnet_edu.widgets.kernel_race import SHAPES

    assert SHAPES == {"2560×2560 (q, o)": (2560, 2560), "640×2560 (k, v)": (640, 2560),
                      "6912×2560 (gate, up)": (6912, 2560), "2560×6912 (down)": (2560, 6912),
                      "256×512 (tiny)": (256, 512)}


def test_from_shape_reads_dicts_and_objects():
    llama = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "vocab_size": 32000, "hidden_act": "silu",
             "rope_scaling": {"rope_type": "llama3"}}  # non-shape keys are ignored
    cfg = BitNetConfig.from_shape(llama)
    assert cfg.num_key_value_heads == 32 and cfg.head_dim == 128  # no GQA when not given
    tied_7b = BitNetConfig.preset("llama2-7b", tie_word_embeddings=True)
    assert cfg == BitNetConfig.from_shape(tied_7b)

    class Obj:
        pass

    o = Obj()
    o.__dict__.update(SMALL, head_dim=None)
    assert BitNetConfig.from_shape(o) == BitNetConfig(**SMALL)
    with pytest.raises(ValueError, match="'hidden_size'"):
        BitNetConfig.from_shape({"vocab_size": 1})


# --- energy.Shape ---------------------------------------------------------------------------

def test_energy_shape_builds_a_bitnet_config():
    s = energy.Shape(64, 128, 2, 4, 2, 16, vocab=0)
    assert isinstance(s, BitNetConfig)
    assert (s.hidden_size, s.intermediate_size, s.num_hidden_layers) == (64, 128, 2)
    assert (s.num_attention_heads, s.num_key_value_heads, s.head_dim, s.vocab_size) == (4, 2, 16, 0)
    assert s.linear_params == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)


def test_energy_shapes_are_the_presets():
    for label, name in [("BitNet b1.58 2B4T", "2b4t"), ("LLaMA-2 70B shape", "llama2-70b")]:
        s = energy.SHAPES[label]
        assert isinstance(s, BitNetConfig)
        assert s == BitNetConfig.from_shape(BitNetConfig.preset(name))
        assert energy.Shape.from_config(BitNetConfig.preset(name)) == s
    assert energy.token_cost(energy.SHAPES["BitNet b1.58 2B4T"], "ternary").weight_bytes == \
        2_084_044_800 / 4 + 328_335_360 * 2


# --- one NumPy RMSNorm ----------------------------------------------------------------------

def _old_layers_rms_norm(x, weight, eps):  # model/layers.py before the merge
    x = np.asarray(x, np.float32)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(var + np.float32(eps))) * weight


def _old_bitlinear_rms_norm(x, weight=None, eps=1e-5):  # bitlinear.py before the merge
    x = np.asarray(x, np.float32)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    return y if weight is None else y * np.asarray(weight, np.float32)


def test_one_rms_norm_bit_identical_to_both_old_copies():
    assert layers.rms_norm is bitlinear.rms_norm is norm.rms_norm
    rng = np.random.default_rng(0)
    for shape in [(7,), (3, 64), (5, 4, 2560)]:
        x = (rng.standard_normal(shape) * rng.uniform(0.01, 50)).astype(np.float32)
        w = rng.standard_normal(shape[-1]).astype(np.float32)
        got = layers.rms_norm(x, w, 1e-5)  # the engine's call: weight and eps positional
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _old_layers_rms_norm(x, w, 1e-5))
        np.testing.assert_array_equal(bitlinear.rms_norm(x), _old_bitlinear_rms_norm(x))
        np.testing.assert_array_equal(bitlinear.rms_norm(x.astype(np.float64), w, eps=1e-6),
                                      _old_bitlinear_rms_norm(x.astype(np.float64), w, 1e-6))


# --- training: ModelConfig is a BitNetConfig --------------------------------------------------

OLD_KW = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
              max_seq_len=16)
HF_KW = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=16,
             rope_theta=10000.0)


def test_model_config_takes_the_old_names():
    pytest.importorskip("torch")
    from bitnet_edu.train import ModelConfig

    old = ModelConfig(**OLD_KW)
    assert isinstance(old, BitNetConfig) and old == ModelConfig(**HF_KW)
    assert (old.dim, old.n_layers, old.n_heads, old.n_kv_heads, old.ffn_dim, old.max_seq_len,
            old.eps, old.head_dim, old.quantized) == (32, 2, 4, 2, 48, 16, 1e-5, 8, True)
    assert ModelConfig(64, 32, 2, 4, 2, 48, 16) == old  # the old positional order
    default = ModelConfig()  # the old defaults
    assert (default.vocab_size, default.dim, default.n_layers, default.ffn_dim,
            default.max_seq_len, default.rope_theta) == (4096, 256, 6, 704, 256, 10000.0)
    wider = replace(old, dim=64)
    assert wider.hidden_size == 64 and wider.head_dim == 16  # head_dim follows dim // n_heads
    assert not replace(old, quantized=False).quantized
    d = old.to_dict()
    assert "quantized" not in d and "dim" not in d and d["hidden_size"] == 32
    with pytest.raises(ValueError, match="divide"):
        ModelConfig(dim=30, n_heads=4)


def test_bitnet_lm_from_old_and_new_configs_has_the_same_shape():
    torch = pytest.importorskip("torch")
    from bitnet_edu.bitlinear import BitLinear
    from bitnet_edu.train import BitNetLM, ModelConfig

    old = BitNetLM(ModelConfig(**OLD_KW, quantized=False))
    new = BitNetLM(BitNetConfig(**HF_KW), quantized=False)
    assert {k: v.shape for k, v in old.state_dict().items()} == \
        {k: v.shape for k, v in new.state_dict().items()}
    assert isinstance(new.cfg, BitNetConfig) and new.cfg.quantized is False
    assert not any(isinstance(m, BitLinear) for m in new.modules())
    qat = BitNetLM(BitNetConfig(**HF_KW))
    assert len(qat.bitlinears()) == 14 and qat.cfg.quantized
    for m in (old, qat):
        assert m.num_params() == sum(p.numel() for p in m.parameters()) == m.cfg.n_params
    with pytest.raises(ValueError, match="max_seq_len"):
        qat(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        BitNetLM(BitNetConfig(**HF_KW, tie_word_embeddings=False))


def test_shipped_default_model_files_still_load():
    pytest.importorskip("torch")
    from bitnet_edu import DEFAULT_MODEL
    from bitnet_edu.train import CONFIGS, ModelConfig

    if not (DEFAULT_MODEL / "training.json").exists():
        pytest.skip("default model not shipped")
    summary = json.loads((DEFAULT_MODEL / "training.json").read_text())
    small = CONFIGS["small"].model  # the recipe the shipped model came from
    trained = ModelConfig.from_dict(summary["model_config"])
    assert BitNetConfig.from_shape(trained) == BitNetConfig.from_shape(small)
    assert trained.quantized and trained.max_position_embeddings == small.max_position_embeddings
    shipped = BitNetConfig.from_json(DEFAULT_MODEL / "config.json")
    assert BitNetConfig.from_shape(shipped) == BitNetConfig.from_shape(small)
    assert (shipped.rope_theta, shipped.max_position_embeddings) == (small.rope_theta, 256)


def test_model_card_unchanged_from_old_or_new_summary(tmp_path):
    pytest.importorskip("torch")
    from bitnet_edu import DEFAULT_MODEL
    from bitnet_edu.train import CONFIGS
    from bitnet_edu.train.recipe import write_model_card

    if not (DEFAULT_MODEL / "training.json").exists():
        pytest.skip("default model not shipped")
    summary = json.loads((DEFAULT_MODEL / "training.json").read_text())
    want = (DEFAULT_MODEL / "MODEL_CARD.md").read_text()
    assert write_model_card(tmp_path, summary).read_text() == want
    summary["model_config"] = CONFIGS["small"].model.to_dict()  # what run() writes now
    assert write_model_card(tmp_path, summary).read_text() == want


def test_train_loop_and_ptq_import_no_cycle():
    def imports(rel):
        tree = ast.parse((PACKAGE / "train" / rel).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    assert "ptq" not in imports("loop.py") and "loop" in imports("ptq.py")
