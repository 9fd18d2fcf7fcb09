"""Memory budget of the real 2B4T config: counts by hand, and file sizes predicted from them."""

import math

import pytest

import numpy as np

from bitnet_edu import memory
from bitnet_edu.config import BitNetConfig

PACKED_FILE, BF16_FILE = 1_178_623_988, 4_825_679_400  # real model.safetensors sizes (docs/formats.md)


def test_2b4t_counts_per_kind():
    c = memory.param_counts()
    h, i, layers = 2560, 6912, 30
    assert c["q_proj"] == c["o_proj"] == layers * h * h
    assert c["k_proj"] == c["v_proj"] == layers * h * 5 * 128  # 5 kv heads of 128
    assert c["gate_proj"] == c["up_proj"] == c["down_proj"] == layers * h * i
    assert c["embedding"] == 128256 * h == 328_335_360
    assert c["norms"] == layers * (3 * h + i) + h == 440_320
    assert c["lm_head"] == 0  # tied


def test_2b4t_totals():
    s = memory.count_summary()
    assert s["linear"] == 2_084_044_800
    assert s["total"] == 2_412_820_480  # "about 2.41 B"
    assert s["n_linear_tensors"] == 210
    assert math.isclose(s["embedding"] / 1e6, 328, rel_tol=1e-2)


def test_predicted_file_sizes_match_the_real_files():
    bf16 = memory.predicted_safetensors_bytes(packed=False)
    packed = memory.predicted_safetensors_bytes(packed=True)
    assert bf16 == 2 * 2_412_820_480
    assert abs(bf16 - BF16_FILE) / BF16_FILE < 1e-3
    assert abs(packed - PACKED_FILE) / PACKED_FILE < 1e-3
    assert bf16 < BF16_FILE and packed < PACKED_FILE  # the rest is the JSON header (tens of KB)
    assert BF16_FILE - bf16 < 100_000 and PACKED_FILE - packed < 100_000


def test_table_rows_add_up_and_order():
    rows = {r["format"]: r for r in memory.memory_table()}
    for r in rows.values():
        assert abs(r["linear_bytes"] + r["embedding_bytes"] + r["other_bytes"] - r["total_bytes"]) <= 1
    assert rows["fp32"]["total_bytes"] > rows["bf16"]["total_bytes"] > rows["int8"]["total_bytes"] \
        > rows["ternary 2-bit"]["total_bytes"] > rows["ternary base-3"]["total_bytes"]
    # the ternary linears alone are ~0.41-0.52 GB; the bf16 embedding adds ~0.66 GB
    assert rows["ternary 2-bit"]["linear_bytes"] == 2_084_044_800 // 4
    assert rows["ternary 2-bit"]["embedding_bytes"] == 2 * 328_335_360
    assert 0.41 < rows["ternary log2(3)"]["linear_bytes"] / 1e9 < 0.42


def test_int8_embedding_halves_it():
    rows = memory.memory_table(formats=["ternary 2-bit"], embedding="int8")
    assert rows[0]["embedding_bytes"] == 328_335_360 + 2 * 128256  # + one bf16 scale per row


def test_small_config_and_untied_head():
    cfg = dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    c = memory.param_counts(cfg)
    assert c["q_proj"] == 2 * 8 * 8 and c["k_proj"] == 2 * 8 * 4  # head_dim defaults to 8 // 2
    assert c["lm_head"] == 800
    assert memory.count_summary(cfg)["total"] == sum(c.values())


def test_config_object_with_attributes():
    class Cfg:
        pass

    cfg = Cfg()
    cfg.__dict__.update(memory.BITNET_2B4T)
    assert memory.param_counts(cfg) == memory.param_counts()


def test_bad_input():
    with pytest.raises(ValueError, match="unknown format"):
        memory.memory_table(formats=["int3"])
    with pytest.raises(ValueError, match="embedding"):
        memory.memory_table(embedding="fp8")
    with pytest.raises(ValueError, match="hidden_size"):
        memory.param_counts({"vocab_size": 1})


def test_figure_and_text_table():
    rows = memory.memory_table()
    fig = memory.memory_figure(rows, marks={"claim": 0.4})
    assert [t.name for t in fig.data[:3]] == ["linears", "embedding", "norms + scales"]
    assert fig.data[0].y[0] == pytest.approx(rows[0]["linear_bytes"] / 1e9)
    text = memory.format_table(rows)
    assert "ternary 2-bit" in text and "1.179" in text


@pytest.mark.parametrize("head", ["float32", "int8", "int4"])
def test_bytes_per_token_from_the_config_equals_a_built_models_bytes(head):
    """Counted from the config, the bytes a decoded token reads equal what a built model of that
    shape holds in its layers, head and final norm (plus one embedding row)."""
    from bitnet_edu.config import BitNetConfig, PRESETS
    from bitnet_edu.memory import bytes_per_token
    from bitnet_edu.model.random import random_model
    over = dict(num_hidden_layers=2, vocab_size=1024)
    m = random_model("falcon3-1b", seed=0, head=head, **over)
    got = bytes_per_token(BitNetConfig(**{**PRESETS["falcon3-1b"], **over}), head=head)
    built = sum(L.nbytes for L in m.layers) + m.lm_head.nbytes + m.norm.nbytes
    # the engine keeps each projection's float32 scale beside its layer, not in its nbytes
    assert got["scales"] == 7 * 2 * 4
    assert got["total"] - got["embedding_row"] - got["scales"] == built
    assert got["linear"] == 2 * (2048 * (2 * 8 * 256 + 2 * 4 * 256) + 3 * 2048 * 8192) / 4


def test_param_counts_of_a_llama_layout_member_have_no_sub_norms():
    """falcon3-1b has two RMSNorms per layer plus the final one; the 2B4T block has four."""
    from bitnet_edu.config import BitNetConfig
    c = BitNetConfig.preset("falcon3-1b")
    assert memory.param_counts("falcon3-1b")["norms"] == (2 * c.num_hidden_layers + 1) * 2048
    assert memory.param_counts(c) == memory.param_counts("falcon3-1b")
    two_b = memory.param_counts()["norms"]
    assert two_b > (2 * 30 + 1) * 2560  # the 2B4T block's sub-norms are counted


def test_head_padding_is_the_engines():
    """bytes_per_token counts the head as the engine holds it: 1bitLLM-3B's 3200-wide int8 rows
    padded to 3328 (the undercount was about 3% of its bytes per token), int4 rows to whole
    groups of 128; the constants are the kernels'."""
    from bitnet_edu.kernels import head as head_kernel
    from bitnet_edu.model.transformer import Head
    assert (memory.HEAD_INT8_BLOCK, memory.HEAD_INT4_GROUP) == (head_kernel.QK, head_kernel.G4)
    assert memory.held_columns(3200, "int8") == 3328 and memory.held_columns(2560, "int8") == 2560
    assert memory.held_columns(64, "int8") == 64 and memory.held_columns(100, "int4") == 128
    assert memory.held_columns(3200, "float32") == 3200
    rng = np.random.default_rng(0)
    for h, mode in [(3200, "int8"), (2560, "int8"), (64, "int8"), (200, "int4"), (96, "float32")]:
        t = Head(rng.standard_normal((40, h)).astype(np.float32), mode)
        cfg = BitNetConfig(vocab_size=40, hidden_size=h, intermediate_size=8, num_hidden_layers=1,
                           num_attention_heads=1, num_key_value_heads=1, head_dim=8)
        assert memory.bytes_per_token(cfg, head=mode)["head"] == t.nbytes, (h, mode)
