"""BitNet GGUF <-> canonical checkpoint (no torch): names, config, tokenizer, clear errors."""

import json
import warnings

import numpy as np
import pytest

from bitnet_edu.export import gguf_tensors
from bitnet_edu.gguf import (GGUFError, GGUFReader, TensorData, Value, gguf_model_metadata, gguf_to_hf_name,
                             hf_to_gguf_name, read_gguf_checkpoint, tokenizer_from_gguf, tokenizer_to_gguf,
                             write_gguf)
from bitnet_edu.gguf.container import T_STRING
from bitnet_edu.model.checkpoint import expected_tensors
from bitnet_edu.model.config import BitNetConfig
from tiny_checkpoint import tiny_tokenizer

TEXTS = ["Hello world! The quick brown fox.", "<|begin_of_text|>User: hi<|eot_id|>Assistant:",
         " 1234567  \n\n\tx  y", "naïve café — 東京 🚀", "I've been 'told' he's there"]


def model_config(**overrides):
    cfg = dict(vocab_size=262 + 3, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=64,
               rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=0, eos_token_id=[1, 2],
               tie_word_embeddings=True)
    return {**cfg, **overrides}


def random_weights(config, seed=0):
    """A canonical checkpoint: int8 ternary linears + scales, float32 elsewhere (f16-exact embedding)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_tensors(BitNetConfig.from_dict(config)).items():
        if name.endswith("_proj.weight"):
            weights[name] = rng.integers(-1, 2, size=shape).astype(np.int8)
        elif name.endswith("_scale"):
            weights[name] = np.array([rng.uniform(0.01, 0.1)], np.float32)
        else:
            weights[name] = rng.standard_normal(shape).astype(np.float16).astype(np.float32)
    return weights


def write_model_gguf(path, *, arch="bitnet-b1.58", drop=(), extra=None, seed=0, **overrides):
    """Write a tiny BitNet GGUF with our own writer; returns ``(config, weights, tokenizer)``."""
    config = model_config(**overrides)
    weights = random_weights(config, seed)
    tok = tiny_tokenizer(vocab_size=262)
    tensors = {k: v for k, v in gguf_tensors(config, weights).items() if k not in drop}
    tensors.update(extra or {})
    meta = {**gguf_model_metadata(BitNetConfig.from_dict(config).to_dict(), arch=arch),
            **tokenizer_to_gguf(tok, vocab_size=config["vocab_size"], bos_token_id=0, eos_token_id=[1, 2])}
    write_gguf(path, meta, tensors)
    return config, weights, tok


def test_round_trip_weights_config_tokenizer(tmp_path):
    config, weights, tok = write_model_gguf(tmp_path / "m.gguf")
    cfg, got, tok2 = read_gguf_checkpoint(tmp_path / "m.gguf", progress=False)
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "bos_token_id", "eos_token_id", "tie_word_embeddings"):
        assert cfg[k] == config[k], k
    assert set(got) == set(weights)
    for k, w in weights.items():
        assert got[k].dtype == (np.int8 if k.endswith("_proj.weight") else np.float32), k
        np.testing.assert_array_equal(got[k], w, err_msg=k)
    for text in TEXTS:  # add_bos_token = true (a bos id exists): bos in front, as bitnet.cpp
        assert tok2.encode(text).ids == [0] + tok.encode(text).ids, text
        assert tok2.encode(text, add_special_tokens=False).ids == tok.encode(text).ids, text
        assert tok2.decode(tok2.encode(text).ids, skip_special_tokens=True) == \
            tok.decode(tok.encode(text).ids)
    assert tok2.token_to_id("<|eot_id|>") == 2
    assert tok2.encode("<|eot_id|>", add_special_tokens=False).ids == [2]


def test_layout_matches_bitnet_cpp(tmp_path):
    """Types and sizes as in ggml-model-i2_s.gguf: f16 embedding, f32 norms, I2_S linears (n/4+32)."""
    write_model_gguf(tmp_path / "m.gguf")
    r = GGUFReader(tmp_path / "m.gguf")
    assert r.metadata["general.architecture"] == "bitnet-b1.58" and r.metadata["general.file_type"] == 40
    assert r.metadata["tokenizer.ggml.model"] == "gpt2" and r.metadata["tokenizer.ggml.padding_token_id"] == 1
    assert r.metadata["tokenizer.ggml.eos_token_id"] == 1 and r.metadata["tokenizer.ggml.eot_token_id"] == 2
    types = {n: t.type_name for n, t in r.tensors.items()}
    assert types["token_embd.weight"] == "F16" and types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_sub_norm.weight"] == "F32" and types["blk.0.ffn_down.weight"] == "I2_S"
    assert sum(v == "I2_S" for v in types.values()) == 7 and len(types) == 7 + 4 + 2
    q = r.tensors["blk.0.attn_q.weight"]
    assert q.shape == (128, 128) and q.nbytes == 128 * 128 // 4 + 32
    assert r.tensors["blk.0.attn_k.weight"].shape == (64, 128)  # GQA: 1 kv head of 64
    for key, t in [("bitnet-b1.58.block_count", 4), ("bitnet-b1.58.rope.freq_base", 6),
                   ("bitnet-b1.58.attention.layer_norm_rms_epsilon", 6), ("tokenizer.ggml.token_type", 9)]:
        assert r.types[key][0] == t, key  # u32 / f32 / array, as llama.cpp checks
    assert "bitnet-b1.58.attention.key_length" not in r.metadata  # head_dim * heads == hidden


def test_name_mapping_is_a_bijection():
    names = expected_tensors(BitNetConfig.from_dict(model_config(num_hidden_layers=2)))
    names = [n for n in names if not n.endswith("_scale")]
    gg = [hf_to_gguf_name(n) for n in names]
    assert len(set(gg)) == len(names) and [gguf_to_hf_name(g) for g in gg] == names
    assert hf_to_gguf_name("model.layers.1.post_attention_layernorm.weight") == "blk.1.ffn_norm.weight"
    assert hf_to_gguf_name("model.layers.0.input_layernorm.weight") == "blk.0.attn_norm.weight"
    assert hf_to_gguf_name("model.layers.0.self_attn.o_proj.weight") == "blk.0.attn_output.weight"


def test_bitnet_25_architecture_is_accepted(tmp_path):
    config, weights, _ = write_model_gguf(tmp_path / "m.gguf", arch="bitnet-25")
    cfg, got, _ = read_gguf_checkpoint(tmp_path / "m.gguf", progress=False)
    assert cfg["hidden_size"] == 128
    np.testing.assert_array_equal(got["model.layers.0.mlp.up_proj.weight"], weights["model.layers.0.mlp.up_proj.weight"])


def test_wrong_architecture(tmp_path):
    write_model_gguf(tmp_path / "m.gguf", arch="llama")
    with pytest.raises(GGUFError, match="general.architecture='llama'"):
        read_gguf_checkpoint(tmp_path / "m.gguf", progress=False)


def test_missing_tensor_is_named(tmp_path):
    write_model_gguf(tmp_path / "m.gguf", drop=("blk.0.ffn_sub_norm.weight",))
    with pytest.raises(GGUFError, match=r"missing tensor 'blk.0.ffn_sub_norm.weight'"):
        read_gguf_checkpoint(tmp_path / "m.gguf", progress=False)


def test_unexpected_and_misshapen_tensors(tmp_path):
    write_model_gguf(tmp_path / "a.gguf", extra={"rope_freqs.weight": np.zeros(4, np.float32)})
    with pytest.raises(GGUFError, match="unexpected tensor 'rope_freqs.weight'"):
        read_gguf_checkpoint(tmp_path / "a.gguf", progress=False)
    write_model_gguf(tmp_path / "b.gguf", extra={"blk.5.attn_norm.weight": np.zeros(128, np.float32)})
    with pytest.raises(GGUFError, match="'blk.5.attn_norm.weight' does not belong to a model with 1 layers"):
        read_gguf_checkpoint(tmp_path / "b.gguf", progress=False)
    write_model_gguf(tmp_path / "c.gguf", extra={"output_norm.weight": np.zeros(64, np.float32)})
    with pytest.raises(GGUFError, match=r"'output_norm.weight' has shape \(64,\), expected \(128,\)"):
        read_gguf_checkpoint(tmp_path / "c.gguf", progress=False)


def test_zero_linear_warns(tmp_path):
    zero = TensorData.i2s(np.zeros((128, 128), np.int8), 0.5)
    write_model_gguf(tmp_path / "m.gguf", extra={"blk.0.attn_q.weight": zero})
    with pytest.warns(UserWarning, match="q_proj.weight is entirely zero"):
        read_gguf_checkpoint(tmp_path / "m.gguf", progress=False)


def test_float_linear_is_ternarized_like_bitnet_cpp(tmp_path):
    """bitnet.cpp's converter can write an F32 GGUF of q*scale: we recover q and the scale."""
    q = np.random.default_rng(3).integers(-1, 2, size=(128, 128)).astype(np.int8)
    write_model_gguf(tmp_path / "m.gguf", extra={"blk.0.attn_q.weight": (q * np.float32(0.03)).astype(np.float32)})
    _, got, _ = read_gguf_checkpoint(tmp_path / "m.gguf", progress=False)
    np.testing.assert_array_equal(got["model.layers.0.self_attn.q_proj.weight"], q)
    np.testing.assert_allclose(got["model.layers.0.self_attn.q_proj.weight_scale"], [0.03 * np.abs(q).mean()],
                               rtol=1e-6)


def test_export_rejects_shapes_i2s_cannot_hold():
    config = model_config(hidden_size=96, num_attention_heads=2, head_dim=48, intermediate_size=128)
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj.weight' of shape \(96, 96\).*128"):
        gguf_tensors(config, random_weights(config))


def test_export_rejects_float_linears_and_missing_scales():
    config = model_config()
    w = random_weights(config)
    w["model.layers.0.mlp.up_proj.weight"] = w["model.layers.0.mlp.up_proj.weight"].astype(np.float32)
    with pytest.raises(ValueError, match="up_proj.weight.*int8 ternary.*got float32"):
        gguf_tensors(config, w)
    w = random_weights(config)
    del w["model.layers.0.mlp.down_proj.weight_scale"]
    with pytest.raises(ValueError, match="missing tensor 'model.layers.0.mlp.down_proj.weight_scale'"):
        gguf_tensors(config, w)
    w = random_weights(config)
    w["model.layers.0.mlp.gate_proj.weight"][0, 0] = 2
    with pytest.raises(ValueError, match="gate_proj.weight must hold only -1, 0, \\+1"):
        gguf_tensors(config, w)


def llama3_tokenizer():
    """A tiny tokenizer built like LLaMA-3's tokenizer.json (split regex, ignore_merges, bos template)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers as pt, processors, trainers

    from bitnet_edu.gguf.tokenizer import LLAMA3_PATTERN

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pt.Sequence([pt.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                                     pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pt.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS * 5 + ["hello there general kenobi 2024 12345"] * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    return tok


def test_llama3_tokenizer_round_trip():
    tok = llama3_tokenizer()
    n = tok.get_vocab_size()
    meta = tokenizer_to_gguf(tok, vocab_size=n + 2, bos_token_id=0, eos_token_id=1)
    assert meta["tokenizer.ggml.pre"].value == "llama-bpe" and meta["tokenizer.ggml.add_bos_token"].value is True
    assert meta["tokenizer.ggml.tokens"].value[-1] == f"[PAD{n + 1}]"
    plain = {k: v.value for k, v in meta.items()}
    tok2 = tokenizer_from_gguf(plain)
    for text in TEXTS + ["12345678", "hello\r\n\r\nthere   general"]:
        assert tok2.encode(text).ids == tok.encode(text).ids, text
        assert tok2.encode(text).ids[0] == 0
    assert tok2.encode("[PAD300]").ids == tok.encode("[PAD300]").ids  # fillers are not added tokens


def test_tokenizer_errors():
    from tokenizers import Tokenizer, models, pre_tokenizers

    wp = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="needs a BPE tokenizer"):
        tokenizer_to_gguf(wp, vocab_size=2, bos_token_id=0, eos_token_id=0)
    ws = Tokenizer(models.BPE({"a": 0}, []))
    ws.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="GPT-2 or LLaMA-3 pre-tokenizer"):
        tokenizer_to_gguf(ws, vocab_size=2, bos_token_id=0, eos_token_id=0)
    with pytest.raises(GGUFError, match="tokenizer.ggml.model='llama' is not supported"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "llama"})
    with pytest.raises(GGUFError, match="is not two tokens"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"],
                             "tokenizer.ggml.merges": ["a b c"]})
    with pytest.raises(GGUFError, match="unknown tokens"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"],
                             "tokenizer.ggml.merges": ["a z"]})


def test_unknown_pre_tokenizer_warns():
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.pre": "qwen2"}
    with pytest.warns(UserWarning, match="qwen2"):
        tok = tokenizer_from_gguf(meta)
    assert tok.encode("ab").ids == [2]


def test_chat_template_is_written(tmp_path):
    tok = tiny_tokenizer(vocab_size=262)
    meta = tokenizer_to_gguf(tok, vocab_size=265, bos_token_id=0, eos_token_id=1, chat_template="{{ x }}")
    assert meta["tokenizer.chat_template"] == Value(T_STRING, "{{ x }}")
    json.dumps({k: str(v.value)[:10] for k, v in meta.items()})  # all plain values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer_from_gguf({k: v.value for k, v in meta.items()})  # gpt-2 pre: no warning


def test_absurd_block_count_fails_fast(tmp_path):
    """A corrupt block_count must not make the reader list millions of expected tensors."""
    write_model_gguf(tmp_path / "m.gguf")
    blob = bytearray((tmp_path / "m.gguf").read_bytes())
    key = b"bitnet-b1.58.block_count"
    i = blob.index(key) + len(key) + 4  # skip the value type
    blob[i:i + 4] = (4_456_449).to_bytes(4, "little")
    (tmp_path / "m.gguf").write_bytes(bytes(blob))
    with pytest.raises(GGUFError, match="block_count=4456449 but the file has only 13 tensors"):
        read_gguf_checkpoint(tmp_path / "m.gguf", progress=False)


def test_iter_checks_everything_before_the_first_yield(tmp_path):
    from bitnet_edu.gguf import iter_gguf_checkpoint

    config, weights, _ = write_model_gguf(tmp_path / "m.gguf")
    it = iter_gguf_checkpoint(tmp_path / "m.gguf")
    cfg, tok = next(it)
    items = list(it)
    assert cfg["hidden_size"] == 128 and tok.get_vocab_size() >= 262
    assert [n for n, _ in items] == [n for n in expected_tensors(BitNetConfig.from_dict(config))]
    write_model_gguf(tmp_path / "bad.gguf", extra={"blk.0.ffn_up.weight": np.zeros((2, 64), np.float32)})
    with pytest.raises(GGUFError, match="'blk.0.ffn_up.weight' has shape"):
        next(iter_gguf_checkpoint(tmp_path / "bad.gguf"))
