"""``python -m bitnet_edu.bench load`` at a small shape: files written, loaded, ratios printed."""

import re

from bitnet_edu.bench import load as bench_load
from bitnet_edu.bench.__main__ import BENCHES

SMALL = ("hidden_size=128,intermediate_size=256,num_attention_heads=2,num_key_value_heads=1,"
         "vocab_size=512")


def test_parse_shape():
    cfg = bench_load.parse_shape(SMALL, layers=1)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (128, 1, 512)
    assert bench_load.parse_shape("2b4t").num_hidden_layers == 30


def test_bench_load_runs_small_and_prints_ratios(tmp_path, capsys):
    assert "load" in BENCHES
    assert bench_load.main(["--shape", SMALL, "--layers", "1", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 layers, hidden 128, ffn 256, vocab 512" in out
    assert re.search(r"import baseline: peak RSS \d+\.\d+ GB", out)
    assert re.search(r"export to GGUF I2_S +\d+\.\d s +peak RSS \d+\.\d+ GB .*x model", out)
    for fmt in ("GGUF I2_S", "HF packed"):
        m = re.search(rf"load {fmt} +\d+\.\d s +peak RSS (\d+\.\d+) GB = baseline \+ "
                      rf"(-?\d+\.\d+) x model (\d+\.\d+) GB", out)
        assert m, out
    assert "all targets met:" in out
    assert (tmp_path / "model-i2_s.gguf").stat().st_size > 0
    assert (tmp_path / "hf" / "model.safetensors").stat().st_size > 0
