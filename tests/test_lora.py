"""LoRA on a frozen ternary base (bitnet_edu.train.lora), in PEFT's format, checked against PEFT.

Most tests use a tiny random BitNetLM (milliseconds); two load the shipped model.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from bitnet_edu.bitlinear import BitLinear  # noqa: E402
from bitnet_edu.quant import absmean_ternary  # noqa: E402
from bitnet_edu.train import lora as L  # noqa: E402
from bitnet_edu.train.finetune import (FinetuneConfig, chat_batches, exact_match,  # noqa: E402
                                       finetune, load_tokenizer, token_batches)
from bitnet_edu.train.import_hf import latent_from_ternary, load_bitnet_lm  # noqa: E402
from bitnet_edu.train.model import BitNetLM, ModelConfig  # noqa: E402

TINY = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32)


@pytest.fixture
def base():
    torch.manual_seed(0)
    return BitNetLM(ModelConfig(**TINY))


def _x(seed=1, T=16):
    return torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(seed))


def _randomize_b(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in L.lora_layers(model):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


def _peft_load(base_model, adapter_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(L.HFCausalLM(copy.deepcopy(base_model)), adapter_dir)


# --- the shipped model in torch -----------------------------------------------------------------

def test_latent_from_ternary_reproduces_codes_and_scale():
    rng = np.random.default_rng(0)
    for zeros in (0.0, 0.3, 0.6, 0.95):  # the clip at +-1 makes any zero fraction work
        q = rng.choice([-1, 0, 1], size=(24, 40), p=[(1 - zeros) / 2, zeros, (1 - zeros) / 2])
        q = q.astype(np.int8)
        w = latent_from_ternary(q, 0.0371).numpy()
        q2, s2 = absmean_ternary(w)
        assert np.array_equal(q2, q)
        assert s2 == pytest.approx(0.0371, rel=1e-6)


def test_shipped_model_in_torch_matches_engine():
    import bitnet_edu
    from bitnet_edu.formats.hf import read_hf_checkpoint

    lm = load_bitnet_lm()
    _, w = read_hf_checkpoint(bitnet_edu.DEFAULT_MODEL)
    for name, m in lm.bitlinears():
        q, s = m.ternary()
        assert np.array_equal(q, w[f"model.{name}.weight"]), name
        assert s == pytest.approx(float(w[f"model.{name}.weight_scale"][0]), rel=1e-6), name
    eng = bitnet_edu.load_model()
    ids = np.array([0] + eng.encode("And it came to pass, when the king heard these words")[:40])
    a = eng.logits(ids)
    with torch.no_grad():
        b = lm(torch.from_numpy(ids)[None])[0].numpy()
    # Logits of magnitude ~15 agree to 1.1e-5 (float32 summation order) at every position but
    # the last: there one input of layer 0's o_proj lands 7.6e-6 (one float32 ulp at 64) from
    # an int8 rounding tie, the two computations round it apart by one code, and that position
    # moves by 0.026.  So: most positions to 1e-4, every one to 0.1, same greedy tokens.
    per_pos = np.abs(a - b).max(-1)
    assert np.mean(per_pos < 1e-4) >= 0.9 and per_pos.max() < 0.1
    assert (a.argmax(-1) == b.argmax(-1)).all()


# --- add_lora -----------------------------------------------------------------------------------

def test_add_lora_wraps_bitlinear_frozen_and_starts_as_identity(base):
    x = _x()
    with torch.no_grad():
        ref = base(x)
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, lora_alpha=8))
    layers = L.lora_layers(m)
    assert len(layers) == 7 * TINY["n_layers"]
    assert {n.rsplit(".", 1)[-1] for n, _ in layers} == set(L.PEFT_TARGETS)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    for _, lay in layers:
        assert isinstance(lay.base_layer, BitLinear) and lay.scaling == 2.0
        assert not lay.base_layer.weight.requires_grad
        assert torch.count_nonzero(lay.lora_B.weight) == 0  # PEFT's init: B = 0 ...
        bound = 1 / np.sqrt(lay.in_features)  # ... A kaiming-uniform(a=sqrt 5) = U(+-1/sqrt(in))
        assert 0.5 * bound < lay.lora_A.weight.abs().max() <= bound
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    counts = L.trainable_parameters(m)
    r, d, f, kv = 4, TINY["dim"], TINY["ffn_dim"], 16  # kv = n_kv_heads * head_dim
    per_layer = (r * (d + d) + r * (d + kv) * 2 + r * (d + d) + r * (d + f) * 2 + r * (f + d))
    assert counts["trainable"] == TINY["n_layers"] * per_layer


def test_add_lora_targets_and_errors(base):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(target_modules=("q_proj", "v_proj"),
                                                     layers_to_transform=(1,)))
    assert [n for n, _ in L.lora_layers(m)] == ["layers.1.self_attn.q_proj",
                                                "layers.1.self_attn.v_proj"]
    with pytest.raises(ValueError, match="no BitLinear matched"):
        L.add_lora(copy.deepcopy(base), L.LoraConfig(target_modules=("qproj",)))
    with pytest.raises(ValueError, match="already"):
        L.add_lora(m)


def test_lora_forward_is_quantized_base_plus_float_low_rank(base):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, lora_alpha=8))
    _randomize_b(m)
    lay = m.layers[0].self_attn.q_proj
    x = torch.randn(5, TINY["dim"])
    with torch.no_grad():
        want = lay.base_layer(x) + x @ lay.lora_A.weight.T @ lay.lora_B.weight.T * 2.0
        assert torch.allclose(lay(x), want, atol=1e-6)
        # the base path is the ternary one, not the float latent matmul
        assert not torch.allclose(lay.base_layer(x), x @ lay.base_layer.weight.T, atol=1e-3)


def test_training_updates_only_lora_and_base_stays_bit_identical(base):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = np.random.default_rng(0).integers(0, 64, 4000).astype(np.uint16)
    fc = FinetuneConfig(steps=8, batch_size=4, seq_len=16, lr=1e-2, warmup=1)
    hist = finetune(m, token_batches(data, fc), fc)
    assert hist["trainable"] == L.trainable_parameters(m)["trainable"]
    after = m.state_dict()
    for k, v in before.items():
        if ".lora_A." in k or ".lora_B." in k:
            assert not torch.equal(after[k], v), f"{k} did not train"
        else:
            assert torch.equal(after[k], v), f"{k} changed"
    codes0 = {n: mm.ternary()[0] for n, mm in base.bitlinears()}
    for n, lay in L.lora_layers(m):
        assert np.array_equal(lay.base_layer.ternary()[0], codes0[n])


# --- PEFT's format ------------------------------------------------------------------------------

def test_save_adapter_writes_peft_names_and_config(base, tmp_path):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, lora_alpha=8))
    _randomize_b(m)
    base_dir = tmp_path / "base"  # PEFT reads the base's config.json (vocab_size) on save
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(base.cfg.to_dict()))
    L.save_adapter(m, tmp_path / "ours", base_model_name_or_path=str(base_dir))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ours" / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 7 * TINY["n_layers"]
    # PEFT itself, on the same model, saves the same names and the same config fields
    pm = _peft_load(base, tmp_path / "ours")
    pm.save_pretrained(str(tmp_path / "peft"))
    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), "pt") as f:
        assert set(f.keys()) == keys
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert set(ours) == set(theirs)
    theirs["target_modules"] = sorted(theirs["target_modules"])  # PEFT writes a set's order
    assert ours == theirs
    assert ours["peft_type"] == "LORA" and ours["task_type"] == "CAUSAL_LM"
    assert ours["bias"] == "none" and ours["r"] == 4 and ours["lora_alpha"] == 8
    assert ours["base_model_name_or_path"] == str(base_dir)


def test_peft_loads_our_adapter_onto_our_model_same_logits(base, tmp_path):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, lora_alpha=8))
    _randomize_b(m)
    L.save_adapter(m, tmp_path)
    pm = _peft_load(base, tmp_path)
    # PEFT wrapped our BitLinear (an nn.Linear subclass) in its own lora.Linear
    from peft.tuners.lora import Linear as PeftLoraLinear

    q = pm.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, PeftLoraLinear) and isinstance(q.base_layer, BitLinear)
    x = _x()
    with torch.no_grad():
        ours, theirs = m(x), pm(input_ids=x)
        assert not torch.allclose(ours, base(x), atol=1e-3)  # the adapter does something
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    # our load_adapter onto a fresh copy gives the same
    m2 = L.load_adapter(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.equal(m2(x), ours)


def test_our_load_adapter_reads_what_peft_trained(base, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(L.HFCausalLM(copy.deepcopy(base)), peft.LoraConfig(
            r=2, lora_alpha=6, target_modules=["q_proj", "up_proj"], task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pm.save_pretrained(str(tmp_path))
    m = L.load_adapter(copy.deepcopy(base), tmp_path)
    assert m.lora_config.r == 2 and m.lora_config.scaling == 3.0
    assert sorted(n for n, _ in L.lora_layers(m)) == sorted(
        f"layers.{i}.{s}" for i in range(2) for s in ("self_attn.q_proj", "mlp.up_proj"))
    x = _x()
    with torch.no_grad():
        assert torch.allclose(m(x), pm(input_ids=x), atol=1e-6, rtol=0)


def test_load_adapter_refuses_a_mismatch(base, tmp_path):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, target_modules=("q_proj",)))
    L.save_adapter(m, tmp_path)
    other = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, target_modules=("k_proj",)))
    with pytest.raises(ValueError, match="does not fit"):
        L.load_adapter(other, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        L.load_adapter(copy.deepcopy(base), tmp_path)


# --- merging ------------------------------------------------------------------------------------

def test_merge_latent_equals_peft_merge_and_unload(base, tmp_path):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, lora_alpha=8))
    _randomize_b(m)
    L.save_adapter(m, tmp_path)
    merged = L.merge_lora(m, into="latent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unloaded = _peft_load(base, tmp_path).merge_and_unload()
    for name, w in merged.items():
        assert torch.allclose(w, unloaded.model.get_submodule(name).weight, atol=1e-6), name
    lay = m.layers[1].mlp.down_proj
    want = lay.base_layer.weight + lay.lora_B.weight @ lay.lora_A.weight * lay.scaling
    assert torch.allclose(merged["layers.1.mlp.down_proj"], want, atol=1e-6)


def test_merged_weights_leave_the_ternary_grid_and_requantizing_loses_the_update(base):
    m = L.add_lora(copy.deepcopy(base), L.LoraConfig(r=4, lora_alpha=8))
    x = _x()
    with torch.no_grad():
        ref = base(x)
        for into in ("latent", "ternary"):  # B = 0: merging changes nothing
            assert torch.allclose(L.merged_model(m, into)(x), ref, atol=1e-5)
    rep0 = L.merge_report(m, "ternary")
    assert rep0["not_ternary"] == 0.0 and rep0["codes_changed"] == 0.0
    _randomize_b(m)
    for into in ("latent", "ternary"):
        rep = L.merge_report(m, into)
        assert rep["not_ternary"] > 0.99  # every entry the update touches is off the grid
        assert rep["update_kept"] < 0.9 and rep["requant_error"] > 0.3
        mm = L.merged_model(m, into)
        assert not L.lora_layers(mm)
        for name, lay in mm.bitlinears():  # what the merged model computes with
            q, s = lay.ternary()
            q2, s2 = L.requantize(L.merge_lora(m, into)[name], m.get_submodule(name).base_layer,
                                  into)
            assert np.array_equal(q, q2) and s == pytest.approx(s2, rel=1e-6)
    # ternary merge: the base grid's scale, codes = clip(round(M / s))
    lay = m.layers[0].self_attn.q_proj
    q0, s0 = lay.base_layer.ternary()
    w = torch.from_numpy(q0 * np.float32(s0)) + lay.delta_weight().detach()
    q1, s1 = L.requantize(w, lay.base_layer, "ternary")
    assert s1 == s0 and np.array_equal(q1, np.clip(np.round(w.numpy() / s0), -1, 1))


# --- data ---------------------------------------------------------------------------------------

def test_stdlib_docs_split_by_module_and_deterministic():
    from bitnet_edu.train import finetune_data as FD

    tr, va = FD.stdlib_docs("train"), FD.stdlib_docs("val")
    names = lambda docs: {d.split("\n", 1)[0].removeprefix("Module ") for d in docs}  # noqa: E731
    assert names(tr).isdisjoint(names(va)) and "heapq" in names(va) and "json" in names(tr)
    assert len(tr) > 3 * len(va) > 30
    assert FD.module_doc("json") == FD.module_doc("json")
    assert "\ndumps(obj, *, skipkeys=False" in FD.module_doc("json")
    assert "\nTextWrapper.wrap(self, text)" in FD.module_doc("textwrap")
    short = FD.stdlib_docs("val", max_chars=5000)
    assert sum(map(len, short)) == 5000 and short[0] == va[0][:len(short[0])]


def test_kjv_chat_items_and_template():
    from bitnet_edu.train import finetune_data as FD

    tr, va = FD.kjv_chat_items("train"), FD.kjv_chat_items("val")
    qa = {i["question"]: i for i in tr + va}
    abner = qa["Who was the father of Abner?"]  # "Abner the son of Ner": forward
    assert (abner["answer"], abner["kind"], abner["mentions"]) == ("Ner", "son_of", 11)
    assert qa["Whom did Abraham beget?"]["answer"] == "Isaac"  # "Abraham begat Isaac": forward
    assert "Who was the father of Boaz?" not in qa  # Salmon (Ruth 4) or Salma (1 Chr 2): dropped
    assert "Who was the father of Joshua?" not in qa  # Nun, or Josedech (Haggai): dropped
    assert "Whom did Salmon beget?" not in qa  # Boaz (Ruth 4) or Booz (Matthew 1): dropped
    rev = [i for i in tr + va if i["kind"] == "father"]
    assert rev and all(f"{i['question'][22:-1]} the son of {i['answer']}" not in
                       "\n".join(FD.load_chapters()) for i in rev[:20])  # only "X begat Y"
    assert {i["kind"] for i in va} == set(FD.CHAT_KINDS)
    verse = next(i for i in tr if i["kind"] == "verse")
    assert verse["question"].startswith("Finish the verse: ")
    assert 2 <= len(verse["answer"].split()) <= 8
    full = verse["question"].removeprefix("Finish the verse: ") + " " + verse["answer"]
    assert any(v.startswith(full) for ch in FD.load_chapters() for v in ch.split("\n"))
    # verse_end: the verse without its last word -> that word, the verse's actual ending
    verses = {v for ch in FD.load_chapters() for v in ch.split("\n")}
    ends = [i for i in tr + va if i["kind"] == "verse_end"]
    assert len([i for i in ends if i["split"] == "val"]) > 2000  # enough to measure EM on
    for it in ends[::97]:
        first = it["question"].removeprefix("Finish the verse: ")
        assert it["question"].startswith("Finish the verse: ") and first[-1].isalpha()
        assert it["answer"].isalpha() and it["plain"] == first
        v = it["fact"].removeprefix("verse:")
        assert v in verses and v.startswith(first + " " + it["answer"])
        assert v[len(first) + 1 + len(it["answer"]):].strip(".?!;:,") == ""  # nothing after it
    genesis = qa["Finish the verse: In the beginning God created the heaven and the"]
    assert (genesis["kind"], genesis["answer"]) == ("verse_end", "earth")
    # a verse's clause and its last word are one fact: no held-out verse_end whose verse
    # trains as a `verse` item (its answer would end with the held-out word)
    def text(i):  # the verse a question and its answer spell out, trailing punctuation dropped
        return i["question"].removeprefix("Finish the verse: ") + " " + i["answer"]

    train_text = {text(i) for i in tr if i["kind"] in FD.VERSE_KINDS}
    assert not train_text & {text(i) for i in va if i["kind"] in FD.VERSE_KINDS}
    assert len({text(i) for i in tr + va if i["kind"] == "verse"} & {text(i) for i in ends}) > 1000
    # verse_every thins each verse kind, not the genealogies
    thin = FD.kjv_chat_items("train", verse_every=8)
    for k in FD.CHAT_KINDS:
        n_all, n_thin = sum(i["kind"] == k for i in tr), sum(i["kind"] == k for i in thin)
        assert n_thin == (-(-n_all // 8) if k in FD.VERSE_KINDS else n_all), k
    # no question on both sides, and a fact and its reverse on the same side
    tq, vq = {i["question"] for i in tr}, {i["question"] for i in va}
    assert tq.isdisjoint(vq) and len(tq) == len(tr) and len(vq) == len(va)
    side = {}
    for i in tr + va:
        side.setdefault(i["fact"], set()).add(i["split"])
    assert all(len(s) == 1 for s in side.values())
    assert 0.1 < len(va) / (len(tr) + len(va)) < 0.3
    text = FD.chat_text("Who was the father of Isaac?", "Abraham")
    assert text == "User: Who was the father of Isaac?<|eot_id|>Assistant: Abraham<|endoftext|>"
    assert FD.chat_text("Q?", "A", generation_prompt="Assistant: ") == \
        "User: Q?<|eot_id|>Assistant: A<|endoftext|>"  # 2B4T's template: no second space
    assert FD.chat_text("Q?") == "User: Q?<|eot_id|>Assistant:"  # the shipped model's


def test_chat_batches_score_answer_tokens_only():
    from bitnet_edu.train.finetune import chat_prompt_ids

    tok = load_tokenizer()
    items = [{"kind": "father", "question": "Who was the father of Isaac?", "answer": "Abraham"},
             {"kind": "verse", "question": "Finish the verse: Jesus wept,", "answer": "and said"}]
    x, y = chat_batches(items, tok, batch_size=6, seed=0)(0)
    assert x.shape == y.shape
    for r in range(6):
        tgt = y[r][y[r] != -100].tolist()
        assert tgt[-1] == 0  # the end-of-turn token <|endoftext|>
        ans = tok.decode(tgt[:-1])
        assert ans in (" Abraham", " and said")  # the space rides on the answer
        assert tok.encode(ans).ids == tgt[:-1]  # the answer's own tokens, "ĠAbraham"
        first = int((y[r] != -100).nonzero()[0])
        q = items[0 if ans == " Abraham" else 1]["question"]
        assert x[r, :first + 1].tolist() == chat_prompt_ids(tok, q)  # exactly the prompt's ids
        assert tok.decode(x[r, :first + 1].tolist()).endswith("<|eot_id|>Assistant:")


def test_training_prompt_tokens_are_the_engines():
    """The tokens the adapter is trained on after are the ones the engine's chat() feeds."""
    import bitnet_edu
    from bitnet_edu.model.generation import _prompt_ids, chat_prompt
    from bitnet_edu.train.finetune import _encode_item, generation_prompt
    from bitnet_edu.train.finetune_data import kjv_chat_items

    eng = bitnet_edu.load_model()
    assert eng.generation_prompt == generation_prompt() == "Assistant:"
    tok = load_tokenizer()
    for it in kjv_chat_items("val", max_items=12):
        ids, n_p = _encode_item(tok, it, 256)
        msgs = [{"role": "user", "content": it["question"]}]
        want, is_text = _prompt_ids(eng, chat_prompt(eng, msgs))
        assert is_text and ids[:n_p] == want
        assert ids[n_p:] == eng.encode(" " + it["answer"]) + [eng.config.eos_token_id]


def test_torch_greedy_answers_equal_the_engines():
    """Base model (B = 0): the torch batch greedy decoder and the engine's chat agree."""
    import bitnet_edu
    from bitnet_edu.train.finetune import answers_greedy
    from bitnet_edu.train.finetune_data import kjv_chat_items

    eng = bitnet_edu.load_model()
    tok = load_tokenizer()
    lm = load_bitnet_lm()
    items = kjv_chat_items("val", max_items=6)
    ours = answers_greedy(lm, tok, [it["question"] for it in items], max_new_tokens=12)
    for it, a in zip(items, ours):
        reply = eng.chat([{"role": "user", "content": it["question"]}], max_new_tokens=12)
        assert reply.split("\n")[0].strip() == a


def test_exact_match_counts_hits():
    tok = load_tokenizer()
    answer = tok.encode(" Abraham").ids + [0]

    class Parrot(torch.nn.Module):  # greedily says " Abraham" then ends the turn
        cfg = ModelConfig(**TINY)

        def forward(self, idx):
            out = torch.zeros(idx.shape[0], idx.shape[1], 4096)
            for r in range(idx.shape[0]):
                row = [t for t in idx[r].tolist()]
                said = tok.decode(row).split("Assistant:", 1)[1]
                k = len(tok.encode(said).ids) if said else 0
                out[r, :, answer[min(k, len(answer) - 1)]] = 1.0  # every position (padding)
            return out

    items = [{"kind": "father", "question": "Who was the father of Isaac?", "answer": "Abraham."},
             {"kind": "father", "question": "Who was the father of Jacob?", "answer": "Isaac"},
             {"kind": "verse", "question": "Finish the verse: x,", "answer": "Abraham and Sarah"}]
    r = exact_match(Parrot(), tok, items)
    assert r["answers"] == ["Abraham"] * 3
    assert r["by_kind"] == {"father": (1, 2), "verse": (0, 1)}
    assert r["exact_match"] == pytest.approx(1 / 3) and r["first_word"] == pytest.approx(2 / 3)
    assert r["table"]["verse"]["f1"] == pytest.approx(0.5)  # 1 of 1 predicted, 1 of 3 reference


def test_plain_text_probe_keeps_the_next_word_for_verse_end():
    """Plain text has no end of verse: the probe scores a verse_end by the word that comes
    next, other kinds by the continuation up to its first punctuation mark."""
    from bitnet_edu.train.finetune import plain_answers, plain_text_match

    tok = load_tokenizer()
    earth = tok.encode(" earth").ids
    assert len(earth) == 1

    class Earth(torch.nn.Module):  # greedily says " earth earth earth ..."
        cfg = ModelConfig(**TINY)

        def forward(self, idx):
            out = torch.zeros(idx.shape[0], idx.shape[1], tok.get_vocab_size())
            out[..., earth[0]] = 1.0
            return out

    items = [{"kind": "verse_end", "answer": "earth", "plain": "God created the heaven and the"},
             {"kind": "verse", "answer": "earth and sea", "plain": "God created the heaven,"}]
    for it in items:
        it["question"] = "Finish the verse: " + it["plain"]
    n = len(tok.encode(" earth and sea").ids) + 4  # the probe's budget: the reference's + 4
    assert plain_answers(Earth(), tok, items) == ["earth", " ".join(["earth"] * n)]
    r = plain_text_match(Earth(), tok, items)
    assert r["by_kind"] == {"verse": (0, 1), "verse_end": (1, 1)}
    assert r["table"]["verse"]["first_word"] == 1.0


def test_stdlib_docs_same_text_in_every_process():
    """No memory addresses or live state (logging's handler list) in the text: two processes
    with different hash seeds and different logging setups give the same checksum."""
    import os
    import subprocess
    import sys

    code = ("import logging; from bitnet_edu.train import finetune_data as FD; "
            "logging.getLogger('x').addHandler(logging.StreamHandler()) if {} else None; "
            "print(FD.stdlib_docs_info()['sha256'])")
    out = [subprocess.run([sys.executable, "-c", code.format(i)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": str(i)}, check=True).stdout
           for i in (0, 1)]
    assert out[0] == out[1] and len(out[0].strip()) == 64
    from bitnet_edu.train import finetune_data as FD

    assert not any(" at 0x" in d for d in FD.stdlib_docs("train") + FD.stdlib_docs("val"))


# --- the shipped chat adapter -------------------------------------------------------------------

#: the shipped adapter's regression bound: held-out verse_end items scored, and the exact-match
#: gain over the base it must keep (measured on these 200: 0% -> 8.5%, 17 hits, so 4 points is
#: about two binomial standard deviations below; README.md: 0% -> 8.5% on 400, ceiling 15.2%)
N_VERSE_END = 200
VERSE_END_EM_MARGIN = 0.04


def _shipped_chat_adapter():
    from pathlib import Path

    import bitnet_edu

    d = Path(bitnet_edu.__file__).parent / "adapters" / "chat"
    if not (d / "adapter_model.safetensors").exists():
        pytest.fail(f"{d} is missing: python -m bitnet_edu.train.lora chat --out {d}")
    return d


def test_shipped_chat_adapter_loads_with_peft():
    d = _shipped_chat_adapter()
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] <= 16
    assert (d / "adapter_model.safetensors").stat().st_size < 1_000_000
    lm = load_bitnet_lm()
    pm = _peft_load(lm, d)
    ours = L.load_adapter(copy.deepcopy(lm), d)
    x = torch.tensor([[0] + load_tokenizer().encode("User: Who was the father of Isaac?").ids])
    with torch.no_grad():
        a, b = ours(x), pm(input_ids=x)
        assert not torch.allclose(a, lm(x), atol=1e-3)  # it does something
    assert torch.allclose(a, b, atol=1e-4, rtol=0)


def test_shipped_chat_adapter_beats_the_base_on_held_out_questions():
    """A regression bound on a fixed held-out subset: the base answers an empty line in the
    chat template, the adapter answers in the format; held-out EXACT MATCH on ``verse_end``
    (a verse's last word) is above the base's by a margin; first-word accuracy on ``verse``
    (the last clause, where exact match stays near 0) is above the base's too.  The adapter's
    README.md has the full table."""
    from bitnet_edu.train.finetune import chat_eval_items, fast_frozen

    items = chat_eval_items(n_verse=24, n_gen=2, n_verse_end=N_VERSE_END)
    tok = load_tokenizer()
    base = fast_frozen(L.add_lora(load_bitnet_lm(), L.LoraConfig()))  # B = 0: the base
    tuned = fast_frozen(L.load_adapter(load_bitnet_lm(), _shipped_chat_adapter()))
    before, after = exact_match(base, tok, items), exact_match(tuned, tok, items)
    assert all(i["split"] == "val" for i in items)
    assert sum(bool(x) for x in before["answers"]) <= len(items) // 3  # mostly empty lines
    assert sum(bool(x) for x in after["answers"]) == len(items)
    b, a = before["table"]["verse_end"], after["table"]["verse_end"]
    assert a["n"] == N_VERSE_END
    assert a["em"] >= b["em"] + VERSE_END_EM_MARGIN, (b, a)
    assert after["table"]["verse"]["first_word"] >= before["table"]["verse"]["first_word"] + 0.15
    assert after["exact_match"] > before["exact_match"]


@pytest.mark.slow
def test_fast_chat_training_run_improves_over_before():
    """``python -m bitnet_edu.train.lora chat --fast``: 40 steps x 16 on 2 threads.  Measured
    at 2-3 minutes on the 2-core CI machine (torch's CPU step, not the data), so it is slow.
    The base answers an empty line in the chat template; after the run it answers in the
    format (first words right on the verse endings)."""
    res = L.train_chat_adapter(fast=True, progress=False)
    b, a = res["before"], res["after"]
    assert a["first_word"] > b["first_word"]
    assert a["exact_match"] >= b["exact_match"]
    assert sum(bool(x) for x in a["answers"]) > sum(bool(x) for x in b["answers"])
