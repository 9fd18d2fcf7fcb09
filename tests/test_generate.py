"""Sampling rules, seeded reproducibility, streaming, stops, batch and context checks."""

import numpy as np
import pytest

from bitnet_edu.generate import (apply_repetition_penalty, chat_prompt, sample_next, top_k_filter,
                                 top_p_filter)
from bitnet_edu.model.loading import load_model
from tiny_checkpoint import write_tiny_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("transformers")
    return load_model(write_tiny_checkpoint(tmp_path_factory.mktemp("gen"), seed=1))


def test_top_p_keeps_smallest_nucleus():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(top_p_filter(p, 0.8), [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    np.testing.assert_allclose(top_p_filter(p, 0.81), np.array([0.5, 0.3, 0.15, 0]) / 0.95)
    np.testing.assert_allclose(top_p_filter(p, 0.1), [1, 0, 0, 0])  # top token always kept
    np.testing.assert_array_equal(top_p_filter(p, 1.0), p)


def test_top_k_and_penalty():
    lg = np.array([1.0, 3.0, 2.0, -1.0], np.float32)
    assert np.isinf(top_k_filter(lg, 2)[[0, 3]]).all() and top_k_filter(lg, 2)[1] == 3
    np.testing.assert_allclose(apply_repetition_penalty(lg, [1, 3], 2.0), [1, 1.5, 2, -2])


def test_sampling_is_seeded_and_greedy_at_zero():
    lg = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    assert sample_next(lg, temperature=0) == int(np.argmax(lg))
    a = [sample_next(lg, np.random.default_rng(5), temperature=1.0, top_p=0.9) for _ in range(3)]
    b = [sample_next(lg, np.random.default_rng(5), temperature=1.0, top_p=0.9) for _ in range(3)]
    assert a == b
    draws = {sample_next(lg, np.random.default_rng(s), temperature=1.0, top_k=3) for s in range(200)}
    assert draws <= set(np.argsort(lg)[-3:].tolist()) and len(draws) > 1


def test_generate_text_and_ids_and_seed(model):
    ids = model.generate([0, 5, 9], 8, stop=[])
    assert len(ids) == 8 and all(isinstance(i, int) for i in ids)
    a = model.generate("Hello world", 10, temperature=1.0, seed=3, stop=[])
    b = model.generate("Hello world", 10, temperature=1.0, seed=3, stop=[])
    assert isinstance(a, str) and a == b
    assert model.last_stats["new_tokens"] == 10


def test_stream_equals_generate(model):
    assert "".join(model.stream("The quick", 12, stop=[])) == model.generate("The quick", 12, stop=[])
    assert list(model.stream([0, 7], 5, stop=[])) == model.generate([0, 7], 5, stop=[])


def test_stop_ids_end_generation(model):
    first = model.generate([0, 5, 9], 1, stop=[])[0]
    assert model.generate([0, 5, 9], 10, stop=[first]) == []


def test_batch(model):
    out = model.generate(["Hello", "The quick"], 4, stop=[])
    assert out == [model.generate("Hello", 4, stop=[]), model.generate("The quick", 4, stop=[])]


def test_context_length_error(model):
    with pytest.raises(ValueError, match="context length"):
        model.generate([0] * 100, 100)
    with pytest.raises(ValueError, match="context too long"):
        model.logits([0] * (model.config.max_position_embeddings + 1))


def test_chat_template(model):
    text = chat_prompt(model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "}])
    assert text == "System: Be brief.<|eot_id|>User: Hi<|eot_id|>" + model.generation_prompt
    # 2B4T's generation prompt ends in a space; the shipped small model's (tokenizer_config.json)
    # does not: its BPE carries a word's space on the word
    assert chat_prompt(None, "Hi") == "User: Hi<|eot_id|>Assistant: "
    assert load_model().generation_prompt == "Assistant:"
    with pytest.raises(ValueError, match="role"):
        chat_prompt(model, [{"role": "robot", "content": "x"}])


def test_default_model_missing_is_clear(monkeypatch, tmp_path):
    import bitnet_edu
    monkeypatch.setattr(bitnet_edu, "DEFAULT_MODEL", tmp_path / "nothing")
    with pytest.raises(ValueError, match="default model"):
        load_model()


def test_hub_id_offline_says_how_to_download():
    with pytest.raises(ValueError, match="huggingface-cli download"):
        load_model("microsoft/bitnet-b1.58-2B-4T", revision="abc")


def test_zero_linear_warns(tmp_path):
    pytest.importorskip("transformers")
    from bitnet_edu.model.safetensors_io import read_safetensors, write_safetensors
    d = write_tiny_checkpoint(tmp_path / "z", seed=2)
    t = {k: np.array(v) for k, v in read_safetensors(d / "model.safetensors", raw_bf16=True).items()}
    t["model.layers.1.mlp.down_proj.weight"][:] = 0x55  # all codes 1 -> all weights 0
    bf = {k for k, v in t.items() if v.dtype == np.uint16}
    write_safetensors(d / "model.safetensors", t, bf16=bf)
    with pytest.warns(UserWarning, match="layers.1.mlp.down_proj.weight is entirely zero"):
        load_model(d)


# --- issue 11, defect 10: arguments a user can get wrong get a clear ValueError ---------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(max_new_tokens=-5), "max_new_tokens must be >= 0"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
    (dict(temperature=float("nan")), "temperature must be a number"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(temperature=float("inf")), "finite"),
    (dict(seed=-1), "seed must be a non-negative"),
    (dict(seed=1.5), "seed must be a non-negative"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(repetition_penalty=-2.0), "repetition_penalty must be > 0"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty must be a number"),
    (dict(top_p=float("nan")), "top_p must be a number"),
    (dict(top_p=1.5), "top_p must be between 0 and 1"),
    (dict(top_k=-3), "top_k must be >= 0"),
])
def test_bad_settings_are_value_errors(model, kwargs, words):
    """Defect 10: -n -5 generated nothing silently, seed -1 and NaN temperature crashed in NumPy."""
    kwargs = {"max_new_tokens": 3, **kwargs}
    n = kwargs.pop("max_new_tokens")
    with pytest.raises(ValueError, match=words):
        model.generate([1, 2], n, **kwargs)
    with pytest.raises(ValueError, match=words):
        list(model.stream("Hello", n, **kwargs))


def test_a_tiny_temperature_is_the_greedy_limit(model):
    """Defect 10: temperature 1e-45 overflowed float32; NumPy raised 'probabilities contain NaN'."""
    lg = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    for t in (1e-45, 1e-300, 5e-324):
        assert sample_next(lg, np.random.default_rng(1), temperature=t) == int(np.argmax(lg))
    tie = np.array([3.0, 1.0, 3.0], np.float32)
    draws = {sample_next(tie, np.random.default_rng(s), temperature=1e-45) for s in range(40)}
    assert draws == {0, 2}  # the limit shares the mass between tied top tokens
    greedy = model.generate([1, 2, 3], 6, stop=[])
    assert model.generate([1, 2, 3], 6, temperature=1e-45, seed=0, stop=[]) == greedy
    with pytest.raises(ValueError, match="NaN"):
        sample_next(lg, temperature=float("nan"))


def test_float_and_out_of_vocabulary_ids_are_rejected(model):
    """Defect 10: float ids were truncated silently (1.7 -> 1); a negative id wrapped around."""
    v = model.config.vocab_size
    with pytest.raises(ValueError, match="token ids must be integers"):
        model.generate([1.7, 2.0], 2)
    with pytest.raises(ValueError, match="token ids must be integers"):
        model.generate(np.array([1, 2], np.float32), 2)
    with pytest.raises(ValueError, match=f"token id {v} is outside this model's vocabulary"):
        model.generate([1, v], 2)
    with pytest.raises(ValueError, match="token id -1 is outside"):
        list(model.stream(np.array([[-1, 2]]), 2))
    with pytest.raises(ValueError, match="flat list"):
        list(model.stream([[1, 2], [3]], 2))  # (generate reads a list of lists as a batch)
    assert len(model.generate(np.array([[1, 2]], np.int32), 2, stop=[])) == 2  # any int shape


def test_generation_prompt_from_tokenizer_config(tmp_path):
    import json
    pytest.importorskip("transformers")
    d = write_tiny_checkpoint(tmp_path / "m", seed=1)
    cfg = d / "tokenizer_config.json"
    base = json.loads(cfg.read_text()) if cfg.exists() else {}
    cfg.write_text(json.dumps({**base, "bitnet_edu_generation_prompt": "Bot:"}))
    m = load_model(d)
    assert chat_prompt(m, "Hi") == "User: Hi<|eot_id|>Bot:"
    for bad in ("", 3, ["Bot:"]):
        cfg.write_text(json.dumps({**base, "bitnet_edu_generation_prompt": bad}))
        with pytest.raises(ValueError, match="bitnet_edu_generation_prompt"):
            load_model(d)


def test_shipped_chat_template_matches_transformers():
    """The shipped model's jinja chat_template (what transformers and a GGUF export use) renders
    the same text as the engine's chat_prompt."""
    transformers = pytest.importorskip("transformers")
    import bitnet_edu
    tok = transformers.AutoTokenizer.from_pretrained(bitnet_edu.DEFAULT_MODEL)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Who was Boaz? "},
            {"role": "assistant", "content": "A man of Bethlehem."}, {"role": "user", "content": "And?"}]
    hf = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert hf == chat_prompt(load_model(), msgs)
