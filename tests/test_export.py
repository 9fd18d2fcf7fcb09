"""End to end: tiny HF checkpoint -> to_gguf -> read back / load_model: same weights, tokens, logits.

The linears' in_features are multiples of 128 (I2_S blocks).  The GGUF stores the embedding
in f16 where the HF file has bf16: every bf16 value of a normal-range number is exact in f16,
so the GGUF model's logits equal the HF directory model's to float32 noise.
"""

import warnings

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from tokenizers import Tokenizer  # noqa: E402

from bitnet_edu.export import to_gguf  # noqa: E402
from bitnet_edu.gguf import GGUFReader, read_gguf_checkpoint  # noqa: E402
from bitnet_edu.model.checkpoint import read_hf_checkpoint  # noqa: E402
from bitnet_edu.model.loading import load_model  # noqa: E402
from tiny_checkpoint import write_tiny_checkpoint  # noqa: E402

# GQA ratio 2, head_dim 32, 2 layers, vocab 305 (not a power of two)
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32)
IDS = [0, 5, 17, 40, 100, 3, 9, 55, 200, 301, 7, 8]
TEXTS = ["Hello world! The quick brown fox.", "<|begin_of_text|>User: hi<|eot_id|>Assistant:",
         " 1234567  \n\n\tx", "naïve café — 東京 🚀"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = write_tiny_checkpoint(tmp_path_factory.mktemp("hf"), packed=True, seed=7, **SHAPE)
    path = to_gguf(d, d.parent / "tiny-i2_s.gguf", progress=False)
    return d, path


def test_weights_config_and_tokenizer_survive(exported):
    d, path = exported
    config0, weights0 = read_hf_checkpoint(d)
    config, weights, tok = read_gguf_checkpoint(path, progress=False)
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "bos_token_id", "eos_token_id"):
        assert config[k] == config0[k], k
    assert config["head_dim"] == 32 and config["tie_word_embeddings"] is True
    assert set(weights) == set(weights0)
    for k, w in weights0.items():
        if k == "model.embed_tokens.weight":  # bf16 -> f16: exact but for f16 subnormals
            np.testing.assert_allclose(weights[k], w, rtol=0, atol=1e-7)
        else:
            np.testing.assert_array_equal(weights[k], w, err_msg=k)
    tok0 = Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in TEXTS:  # the GGUF says add_bos_token = true: its tokenizer puts bos in front
        assert tok.encode(text).ids == [config["bos_token_id"]] + tok0.encode(text).ids, text
        assert tok.encode(text, add_special_tokens=False).ids == tok0.encode(text).ids, text


def test_file_is_in_bitnet_cpp_layout(exported):
    d, path = exported
    r = GGUFReader(path)
    m = r.metadata
    assert m["general.architecture"] == "bitnet-b1.58" and m["general.name"] == d.name
    assert m["bitnet-b1.58.block_count"] == 2 and m["bitnet-b1.58.attention.head_count_kv"] == 2
    assert m["bitnet-b1.58.rope.dimension_count"] == 32 and m["tokenizer.ggml.pre"] == "gpt-2"
    assert "{{ bos_token }}" in m["tokenizer.chat_template"]
    types = [t.type_name for t in r.tensors.values()]
    assert types.count("I2_S") == 14 and types.count("F32") == 9 and types.count("F16") == 1
    # data section = sum of the tensors' sizes, each padded to 32 (I2_S: out*in/4 + 32)
    end = max(t.offset + t.nbytes for t in r.tensors.values())
    assert end == path.stat().st_size and r.tensors["blk.1.ffn_down.weight"].nbytes == 128 * 256 // 4 + 32


def test_gguf_model_matches_hf_dir_model(exported):
    d, path = exported
    ref, got = load_model(d), load_model(path)
    a, b = ref.logits(IDS), got.logits(IDS)
    np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max())
    assert (a.argmax(1) == b.argmax(1)).all()
    assert got.generate(IDS[:4], 16, stop=[]) == ref.generate(IDS[:4], 16, stop=[])
    from bitnet_edu.model.generation import _prompt_ids
    bos = ref.config.bos_token_id
    for text in TEXTS:  # a text prompt is the same ids (bos first) from the GGUF and the HF dir
        want = _prompt_ids(ref, text)[0]
        if text.startswith("<|begin_of_text|>"):  # as llama.cpp: the flag adds bos regardless
            want = [bos] + want
        assert _prompt_ids(got, text)[0] == want, text


def test_gguf_model_matches_transformers(exported):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    d, path = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.BitNetForCausalLM.from_pretrained(str(d), dtype=torch.bfloat16).eval()
    hf = torch.nn.Module._apply(hf, lambda t: t.float() if t.is_floating_point() else t)
    with torch.no_grad():
        ref = hf(torch.tensor([IDS])).logits[0].numpy()
    got = load_model(path).logits(IDS)
    err, scale = np.abs(got - ref), np.abs(ref).max()  # tolerances as in test_model.py
    assert np.median(err) < 1e-5 * scale and err.max() < 1e-2 * scale, (np.median(err), err.max())
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_model_object_and_master_dir_export_the_same_tensors(exported, tmp_path):
    d, path = exported
    from_model = to_gguf(load_model(d), tmp_path / "m.gguf", progress=False)
    master = write_tiny_checkpoint(tmp_path / "master", packed=False, seed=7, **SHAPE)
    from_master = to_gguf(master, tmp_path / "b.gguf", progress=False)
    r0 = GGUFReader(path)
    for other in (GGUFReader(from_model), GGUFReader(from_master)):
        assert list(other.tensors) == list(r0.tensors)
        for name in r0.tensors:
            a, b = np.asarray(r0.raw(name)), np.asarray(other.raw(name))
            if r0.tensors[name].type_name == "I2_S":  # codes identical; scale bf16-rounded in the packed file
                np.testing.assert_array_equal(a[:-32], b[:-32], err_msg=name)
                np.testing.assert_allclose(a[-32:-28].view(np.float32), b[-32:-28].view(np.float32), rtol=1e-2)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)


def test_sizes_i2s_cannot_hold_are_refused(tmp_path):
    d = write_tiny_checkpoint(tmp_path / "odd", seed=1)  # hidden 96: not a multiple of 128
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj.weight' of shape \(96, 96\)"):
        to_gguf(d, tmp_path / "odd.gguf", progress=False)
    assert not (tmp_path / "odd.gguf").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        to_gguf(tmp_path, tmp_path / "x.gguf", progress=False)
    with pytest.raises(ValueError, match=r"\.to_checkpoint\(\)"):
        to_gguf(object(), tmp_path / "x.gguf", progress=False)
