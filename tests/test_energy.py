"""The per-token bytes/energy model: counts, formulas and the comparison with bitnet.cpp's measured range (arXiv 2410.16144)."""

import pytest

from bitnet_edu import energy
from bitnet_edu.energy import ENERGY_PJ, SHAPES, Shape, kv_cache_bytes, token_cost

B2 = SHAPES["BitNet b1.58 2B4T"]


def test_horowitz_table_values():
    # the cited 45 nm figures, in pJ; a typo here would silently change every lesson number
    assert ENERGY_PJ["int8_add"] == 0.03 and ENERGY_PJ["int8_mult"] == 0.2
    assert ENERGY_PJ["fp16_add"] == 0.4 and ENERGY_PJ["fp16_mult"] == 1.1
    assert ENERGY_PJ["fp32_add"] == 0.9 and ENERGY_PJ["fp32_mult"] == 3.7
    assert energy.DRAM_PJ_PER_64BIT == {"low": 1300.0, "high": 2600.0}


def test_2b4t_parameter_counts():
    # docs/formats.md: about 2,083 M ternary weights and a 328 M-entry tied head
    assert B2.linear_params == 30 * (2 * 2560 * 2560 + 2 * 2560 * 640 + 3 * 2560 * 6912) == 2_084_044_800
    assert B2.head_params == 128256 * 2560
    assert B2.kv_values_per_position == 2 * 30 * 5 * 128


def test_kv_cache_formula():
    assert kv_cache_bytes(B2, 0) == 0
    assert kv_cache_bytes(B2, 4096) == 76_800 * 4096  # 2 bytes x 38,400 values per position
    assert kv_cache_bytes(B2, 10, bits=8) == 38_400 * 10
    with pytest.raises(ValueError, match="context"):
        kv_cache_bytes(B2, -1)


def test_token_bytes_per_format():
    for fmt, bits in [("fp16", 16), ("int8", 8), ("ternary", 2)]:
        c = token_cost(B2, fmt, context=0)
        head_bits = 16  # the fp16 head stays fp16 in every format by default
        assert c.weight_bytes == B2.linear_params * bits / 8 + B2.head_params * head_bits / 8
        assert c.kv_bytes == 0
    c = token_cost(B2, "ternary", context=100, head_bits=8)
    assert c.weight_bytes == B2.linear_params / 4 + B2.head_params
    assert c.kv_bytes == kv_cache_bytes(B2, 100)


def test_linear_layers_alone_give_the_textbook_ratios():
    # no head, no context: arithmetic 1 - 0.03/1.5, traffic 1 - 2/16
    s = Shape(64, 128, 2, 4, 2, 16, vocab=0)
    fp, tern = token_cost(s, "fp16"), token_cost(s, "ternary")
    assert energy.reduction(fp.compute_pj, tern.compute_pj) == pytest.approx(0.98)
    assert energy.reduction(fp.memory_pj, tern.memory_pj) == pytest.approx(0.875)
    assert fp.memory_pj == pytest.approx(fp.weight_bytes * 1300 / 8)
    assert token_cost(s, "fp16", dram="high").memory_pj == pytest.approx(2 * fp.memory_pj)
    assert token_cost(s, "fp16", dram=100.0).memory_pj == pytest.approx(100 * fp.weight_bytes)


def test_memory_traffic_dominates_and_claim_comparison():
    for fmt in energy.FORMATS:
        c = token_cost(B2, fmt)
        assert c.memory_pj > 50 * c.compute_pj
        assert c.total_mj == pytest.approx(c.total_pj * 1e-9)
    r = energy.claim_comparison(B2)
    # fp16 head kept: 1 - (0.52 + 0.66 GB) / (4.17 + 0.66 GB) ~ 75.6 %, inside 55-82 %
    assert r["total"] == pytest.approx(0.756, abs=0.002)
    assert energy.verdict(r["total"]) == "inside"
    assert energy.verdict(r["total, ternary head too"]) == "above"
    assert r["arithmetic only"] > r["total"]
    assert energy.verdict(0.3) == "below"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="fmt"):
        token_cost(B2, "int4")
    with pytest.raises(ValueError, match="dram"):
        token_cost(B2, "fp16", dram="hbm")


def test_shape_from_config_dict_and_object():
    d = dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
             num_key_value_heads=5, vocab_size=128256)
    assert Shape.from_config(d) == B2

    class Cfg:  # any object with the config.json attribute names
        pass

    cfg = Cfg()
    cfg.__dict__.update(d, head_dim=None)
    assert Shape.from_config(cfg) == B2
