"""Fine-tuning the shipped ternary model: LoRA vs continued QAT vs merge-and-requantize, and a
LoRA chat adapter.  ``python -m bitnet_edu.train.lora compare|chat [--fast]``.

**compare** starts three runs from the shipped default model (loaded into torch with
:func:`~bitnet_edu.train.import_hf.load_bitnet_lm`) and trains each on the same batches of
Python standard-library docstrings (:func:`~bitnet_edu.train.finetune_data.stdlib_docs`), the
same number of tokens:

* (a) **LoRA** on the frozen ternary base (:func:`~bitnet_edu.train.lora.add_lora`): only A/B
  learn; the base stays bit-identical; the adapter is a float side path.
* (b) **continued QAT** of every weight (latent weights, embedding, norms): the result is
  again a plain ternary model, exportable to the engine.
* (c) the adapter of (a) **merged** into the weights and **re-quantized** with absmean (the only
  way to ship (a) as a ternary model): ``merge latent`` adds ``B @ A * scale`` to the latent
  float weight (PEFT's merge), ``merge ternary`` to the ternary value ``q*s`` the base computes
  with; :func:`~bitnet_edu.train.lora.merge_report` tells how much of the update survives.

Reported: held-out bits/char on the new domain (held-out *modules*) and on the KJV held-out
chapters (forgetting), before and after.

**chat** trains a LoRA adapter on the KJV question/answer set
(:func:`~bitnet_edu.train.finetune_data.kjv_chat_items`: kinds ``son_of`` and ``begat``, closed
book, forward in the corpus; ``father``, closed book, only the reverse "X begat Y" in the corpus;
``passage``, open book; ``verse``, a verse's last clause; ``verse_end``, a verse's last word),
loss on the answer tokens only, on
exactly the tokens the engine's ``chat()`` feeds (:func:`chat_prompt_ids`: bos + the template
ending in the model's generation prompt, ``"Assistant:"`` for the shipped model, then
``" answer<|endoftext|>"``).  It reports, on held-out items, by kind and by
``seen_in_pretraining``: the base model's *plain-text* ceiling (the corpus phrase continued, no
template), and exact match / first-word accuracy in the chat template before and after.
``python -m bitnet_edu.train.lora chat --out bitnet_edu/adapters/chat`` writes the shipped
adapter and its model card.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data import encode_texts, get_batch, split_texts
from .evaluate import bits_per_char
from .finetune_data import (CHAT_EOT, CHAT_KINDS, answer_text, chat_text, kjv_chat_items,
                            stdlib_docs, stdlib_docs_info)
from .import_hf import default_model_dir, load_bitnet_lm
from .adapter import (LoraConfig, add_lora, lora_layers, merge_report, merged_model, save_adapter,
                   trainable_parameters)

__all__ = ["FinetuneConfig", "finetune", "token_batches", "load_tokenizer", "compare",
           "format_compare", "chat_batches", "answer_greedy", "exact_match",
           "train_chat_adapter", "main", "fast_frozen", "greedy_batch", "answers_greedy",
           "plain_answers", "plain_text_match", "score_answers", "token_f1", "chat_prompt_ids",
           "generation_prompt", "chat_eval_items", "format_chat", "chat_model_card"]


@dataclass
class FinetuneConfig:
    """One fine-tuning run: ``steps`` x ``batch_size`` x ``seq_len`` tokens, AdamW (no weight
    decay), linear warmup then cosine to ``lr * min_lr_frac``, gradient clipping."""

    steps: int = 200
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    warmup: int = 10
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


def _lr(step: int, fc: FinetuneConfig) -> float:
    if step < fc.warmup:
        return fc.lr * (step + 1) / fc.warmup
    t = (step - fc.warmup) / max(1, fc.steps - fc.warmup - 1)
    lo = fc.lr * fc.min_lr_frac
    return lo + 0.5 * (fc.lr - lo) * (1 + math.cos(math.pi * min(t, 1.0)))


def token_batches(data: np.ndarray, fc: FinetuneConfig):
    """``batch(step) -> (x, y)`` int64 ``[batch_size, seq_len]``: random windows of the uint16
    stream ``data``, depending on ``(seed, step)`` only, so every method sees the same batches."""
    def batch(step):
        g = torch.Generator().manual_seed(fc.seed * 100_003 + step)
        return get_batch(data, fc.batch_size, fc.seq_len, g)
    return batch


def finetune(model, batch, fc: FinetuneConfig, progress: bool = False) -> dict:
    """Train the parameters of ``model`` that require grad, ``fc.steps`` steps on
    ``batch(step) -> (x, y)`` (``y`` = -100 where no loss).  Returns ``{"loss": [...],
    "seconds", "trainable"}``."""
    torch.set_num_threads(fc.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(params, lr=fc.lr, betas=(0.9, 0.999), weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    model.train()
    for step in range(fc.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, fc)
        x, y = batch(step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if fc.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, fc.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss became {losses[-1]} at step {step}")
        if progress and (step + 1) % max(1, fc.steps // 10) == 0:
            print(f"  step {step + 1}/{fc.steps}  loss {np.mean(losses[-10:]):.3f}  "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    model.eval()
    return {"loss": losses, "seconds": time.perf_counter() - t0,
            "trainable": sum(p.numel() for p in params)}


def load_tokenizer(model_dir=None):
    """The ``tokenizers.Tokenizer`` of an HF directory (default the shipped model)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(model_dir or default_model_dir()) / "tokenizer.json"))


# --- the three-way comparison -------------------------------------------------------------------

#: ``--fast`` and full settings: training budget, evaluation sizes.
COMPARE_SETTINGS = {
    "fast": dict(steps=24, batch_size=4, seq_len=128, docs_chars=12_000, kjv_chapters=2),
    "full": dict(steps=100, batch_size=8, seq_len=256, docs_chars=None, kjv_chapters=8),
}


def _bpc(model, tok, texts) -> float:
    return bits_per_char(model, tok, texts, progress=False)["bits_per_char"]


def compare(fast: bool = False, *, model_dir=None, master=None, lora: LoraConfig | None = None,
            lr_lora: float = 2e-3, lr_qat: float = 3e-4, steps: int | None = None,
            out_dir=None, progress: bool = True) -> dict:
    """LoRA vs continued QAT vs merged-and-requantized, same token budget, from the shipped model.

    Args:
        fast: the small settings of :data:`COMPARE_SETTINGS` (well under a minute on 2 cores).
        model_dir, master: the base (:func:`~bitnet_edu.train.import_hf.load_bitnet_lm`).
        lora: the adapter's shape (default r=8, alpha=16, all seven projections).
        lr_lora, lr_qat: peak learning rates of (a) and (b).
        steps: override the setting's step count.
        out_dir: if given, the LoRA adapter is saved there (PEFT format) and ``compare.json``.

    Returns a dict: ``rows`` (method -> ``{"docs_bpc", "kjv_bpc", "trainable", "seconds"}``),
    ``merge`` (:func:`merge_report` summaries, latent and ternary), ``settings``, ``data``.
    """
    st = dict(COMPARE_SETTINGS["fast" if fast else "full"])
    if steps is not None:
        st["steps"] = steps
    fc_a = FinetuneConfig(steps=st["steps"], batch_size=st["batch_size"], seq_len=st["seq_len"],
                          lr=lr_lora, warmup=max(1, st["steps"] // 10))
    fc_b = FinetuneConfig(**{**asdict(fc_a), "lr": lr_qat})
    lora = lora or LoraConfig(base_model_name_or_path=str(model_dir or default_model_dir()))
    tok = load_tokenizer(model_dir)
    eot = tok.token_to_id(CHAT_EOT)
    train_docs = stdlib_docs("train")
    val_docs = stdlib_docs("val", max_chars=st["docs_chars"])
    kjv_val = split_texts("val")[: st["kjv_chapters"]]
    data = encode_texts(tok, train_docs, eot)
    batch = token_batches(data, fc_a)
    say = print if progress else (lambda *a, **k: None)
    say(f"domain: stdlib docstrings, {len(train_docs)} train modules ({len(data):,} tokens), "
        f"held-out {len(val_docs)} modules ({sum(map(len, val_docs)):,} chars); "
        f"KJV held-out {len(kjv_val)} chapters; budget {fc_a.tokens:,} tokens "
        f"({fc_a.steps} steps x {fc_a.batch_size} x {fc_a.seq_len})", flush=True)

    base = load_bitnet_lm(model_dir, master=master)
    rows = {}

    def row(name, model, hist=None):
        t = time.perf_counter()
        r = {"docs_bpc": _bpc(model, tok, val_docs), "kjv_bpc": _bpc(model, tok, kjv_val)}
        r["eval_seconds"] = time.perf_counter() - t
        if hist is not None:
            r.update(trainable=hist["trainable"], train_seconds=hist["seconds"],
                     final_loss=float(np.mean(hist["loss"][-5:])))
        rows[name] = r
        say(f"  {name:<26} docs {r['docs_bpc']:.4f}  kjv {r['kjv_bpc']:.4f} bits/char", flush=True)

    row("base (shipped)", base)
    # (a) LoRA on the frozen ternary base
    torch.manual_seed(fc_a.seed)
    m_a = add_lora(copy.deepcopy(base), lora)
    base_codes = {n: m.base_layer.ternary()[0] for n, m in lora_layers(m_a)}
    say(f"(a) LoRA r={lora.r} alpha={lora.lora_alpha}: {trainable_parameters(m_a)['trainable']:,} "
        f"trainable parameters, lr {lr_lora:g}", flush=True)
    h_a = finetune(m_a, batch, fc_a, progress=progress)
    row("(a) LoRA, frozen ternary", m_a, h_a)
    assert all(np.array_equal(base_codes[n], m.base_layer.ternary()[0])
               for n, m in lora_layers(m_a)), "the frozen base changed"
    # (b) continued QAT of all weights
    m_b = copy.deepcopy(base)
    for p in m_b.parameters():
        p.requires_grad_(True)
    say(f"(b) continued QAT, all {trainable_parameters(m_b)['trainable']:,} parameters, "
        f"lr {lr_qat:g}", flush=True)
    h_b = finetune(m_b, batch, fc_b, progress=progress)
    row("(b) continued QAT", m_b, h_b)
    q0 = np.concatenate([m.ternary()[0].ravel() for _, m in base.bitlinears()])
    q1 = np.concatenate([m.ternary()[0].ravel() for _, m in m_b.bitlinears()])
    rows["(b) continued QAT"]["codes_changed"] = float((q0 != q1).mean())
    # (c) merge (a) and re-quantize
    merge = {}
    for into in ("latent", "ternary"):
        rep = merge_report(m_a, into=into)
        merge[into] = {k: v for k, v in rep.items() if k != "layers"}
        row(f"(c) merge {into}+requant", merged_model(m_a, into=into))
        rows[f"(c) merge {into}+requant"].update(
            codes_changed=rep["codes_changed"], update_kept=rep["update_kept"])
    res = {"rows": rows, "merge": merge,
           "settings": {**st, "lr_lora": lr_lora, "lr_qat": lr_qat, "tokens": fc_a.tokens,
                        "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha,
                                 "target_modules": list(lora.target_modules)},
                        "master": None if master is None else str(master)},
           "data": {**stdlib_docs_info(), "train_tokens": int(len(data)),
                    "val_docs_chars": sum(map(len, val_docs)), "kjv_chapters": len(kjv_val)}}
    if out_dir is not None:
        out = Path(out_dir)
        save_adapter(m_a, out / "adapter")
        (out / "compare.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def format_compare(res: dict) -> str:
    """A text table of :func:`compare`'s result."""
    b = res["rows"]["base (shipped)"]
    lines = [f"{'method':<28}{'docs bpc':>10}{'Δ':>8}{'KJV bpc':>10}{'Δ':>8}"
             f"{'trainable':>12}{'codes chg':>11}",
             "-" * 87]
    for name, r in res["rows"].items():
        tr = f"{r['trainable']:,}" if "trainable" in r else "-"
        cc = f"{r['codes_changed']:.2%}" if "codes_changed" in r else "-"
        lines.append(f"{name:<28}{r['docs_bpc']:>10.4f}{r['docs_bpc'] - b['docs_bpc']:>+8.4f}"
                     f"{r['kjv_bpc']:>10.4f}{r['kjv_bpc'] - b['kjv_bpc']:>+8.4f}{tr:>12}{cc:>11}")
    for into, m in res["merge"].items():
        lines.append(f"merge into {into} (|update| = {m['delta_rel']:.3f} x |W0| per layer): "
                     f"{m['not_ternary']:.2%} of merged weights not in "
                     f"{{-1,0,1}}*scale; re-quantizing keeps {m['update_kept']:.1%} of the LoRA "
                     f"update (rounding error {m['requant_error']:.2f} x |update|), changes "
                     f"{m['codes_changed']:.2%} of the ternary codes")
    s = res["settings"]
    lines.append(f"budget {s['tokens']:,} tokens ({s['steps']} steps x {s['batch_size']} x "
                 f"{s['seq_len']}); lr LoRA {s['lr_lora']:g}, QAT {s['lr_qat']:g}")
    return "\n".join(lines)


# --- a frozen base, fast -----------------------------------------------------------------------

class _FrozenBitLinearFn(torch.autograd.Function):
    """BitLinear's forward with cached ternary codes held as float ``{-1, 0, 1}``: ``xq @ wq.T``
    of integer values is exact in float32 (every partial sum is an integer below
    ``128 * in_features < 2**24``), so the result equals ``torch._int_mm``'s bit for bit, then
    the same rescale ``acc * (s / a)``; the backward is BitLinear's STE ``gy @ (wq * s)``.  On
    CPUs without an int8 GEMM path ``torch._int_mm`` runs ~15x slower than a float GEMM."""

    @staticmethod
    def forward(ctx, x, wq, s, eps):
        a = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
        xq = (x * a).round_().clamp_(-128, 127)
        ctx.save_for_backward(wq, s)
        return (xq @ wq.T).mul_(s / a)

    @staticmethod
    def backward(ctx, gy):
        wq, s = ctx.saved_tensors
        return gy @ (wq.to(gy.dtype) * s), None, None, None


def _frozen_forward(self, x):
    w = self.weight
    if w.requires_grad or x.dtype != w.dtype or x.shape[-1] != self.in_features:
        return type(self).forward(self, x)  # training the base, or another dtype: as ever
    key = (w._version, w.data_ptr())
    c = self.__dict__.get("_frozen_codes")
    if c is None or c[0] != key:
        with torch.no_grad():
            s = w.abs().mean().clamp(min=self.eps)
            c = self.__dict__["_frozen_codes"] = (key, (w / s).round_().clamp_(-1, 1), s)
    if self.norm is not None:
        x = self.norm(x)
    y = _FrozenBitLinearFn.apply(x.reshape(-1, self.in_features), c[1], c[2], self.eps)
    y = y.reshape(*x.shape[:-1], self.out_features)
    return y if self.bias is None else y + self.bias


def fast_frozen(model):
    """Give every BitLinear of ``model`` whose weight is frozen (``requires_grad=False``) the
    float-GEMM forward of :class:`_FrozenBitLinearFn`: same outputs and gradients, bit for bit,
    ~10x faster on CPUs where ``torch._int_mm`` has no int8 kernel.  In place (an instance
    attribute: module names and state dict unchanged); returns ``model``."""
    import types

    from ..bitlinear import BitLinear

    for m in model.modules():
        if isinstance(m, BitLinear):
            m.forward = types.MethodType(_frozen_forward, m)
    return model


# --- chat ---------------------------------------------------------------------------------------

def generation_prompt(model_dir=None) -> str:
    """The generation prompt the engine ends a chat prompt with for the model in ``model_dir``
    (its tokenizer_config.json's ``bitnet_edu_generation_prompt``, else 2B4T's ``"Assistant: "``);
    default the shipped model's ``"Assistant:"``."""
    from ..formats.hf import read_generation_prompt

    return read_generation_prompt(Path(model_dir or default_model_dir())) or "Assistant: "


def chat_prompt_ids(tok, question: str, gen_prompt: str | None = None) -> list[int]:
    """The token ids the engine feeds for ``chat([{"role": "user", "content": question}])``:
    bos (``<|endoftext|>``, id 0) + the tokens of ``chat_prompt``'s text."""
    return [tok.token_to_id(CHAT_EOT)] + tok.encode(chat_text(question, None, gen_prompt)).ids


def _encode_item(tok, item, n_ctx: int, gen_prompt: str | None = None):
    """``(ids, n_prompt)``: the engine's prompt ids (:func:`chat_prompt_ids`), then the answer's
    tokens (``" " + answer``: the byte-level BPE puts a word's space on the word, ``ĠZadok``, as
    pre-training saw it) and the end of turn ``<|endoftext|>``; the prompt's length."""
    gp = generation_prompt() if gen_prompt is None else gen_prompt
    prompt = chat_prompt_ids(tok, item["question"], gp)
    eot = tok.token_to_id(CHAT_EOT)
    ans = tok.encode(answer_text(item["answer"], gp)[: -len(CHAT_EOT)]).ids + [eot]
    return (prompt + ans)[:n_ctx + 1], len(prompt)


def chat_batches(items, tok, batch_size: int, seed: int = 0, n_ctx: int = 256,
                 gen_prompt: str | None = None):
    """``batch(step) -> (x, y)`` int64 ``[B, T]``: ``batch_size`` random items, right-padded;
    ``y`` is the next token on answer positions (answer + end of turn) and -100 elsewhere."""
    enc = [_encode_item(tok, it, n_ctx, gen_prompt) for it in items]

    def batch(step):
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        pick = torch.randint(len(enc), (batch_size,), generator=g).tolist()
        T = max(len(enc[i][0]) for i in pick) - 1
        x = torch.zeros(batch_size, T, dtype=torch.long)
        y = torch.full((batch_size, T), -100, dtype=torch.long)
        for r, i in enumerate(pick):
            ids, n_p = enc[i]
            t = torch.tensor(ids)
            x[r, :len(ids) - 1] = t[:-1]
            y[r, n_p - 1:len(ids) - 1] = t[n_p:]  # predict the answer tokens and the end of turn
        return x, y
    return batch


def _newline_ids(tok) -> frozenset:
    return frozenset(i for i in range(tok.get_vocab_size()) if "\n" in tok.decode([i]))


@torch.no_grad()
def greedy_batch(model, tok, prompts, max_new_tokens=24, batch_size: int = 64):
    """Greedy continuations (token ids) of several prompts (lists of ids) with a torch ``model``:
    each stops at ``<|endoftext|>`` (not included), after a token holding a newline, or after
    ``max_new_tokens`` (one int, or one per prompt).  Sequences are right-padded into one batch
    (causal attention and per-token activation scales make a row's last logits independent of
    the padding after it); no KV cache (the prompts are short)."""
    eot = tok.token_to_id(CHAT_EOT)
    nl = _newline_ids(tok)
    n = model.cfg.max_position_embeddings
    limit = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else \
        list(max_new_tokens)
    model.eval()
    out = [[] for _ in prompts]
    for lo in range(0, len(prompts), batch_size):
        seqs = [list(p) for p in prompts[lo:lo + batch_size]]
        live = [i for i in range(len(seqs)) if limit[lo + i] > 0]
        for _ in range(max(limit[lo:lo + batch_size], default=0)):
            if not live:
                break
            rows = [seqs[i][-n:] for i in live]
            T = max(map(len, rows))
            x = torch.zeros(len(rows), T, dtype=torch.long)
            for r, ids in enumerate(rows):
                x[r, :len(ids)] = torch.tensor(ids)
            logits = model(x)
            last = torch.tensor([len(ids) - 1 for ids in rows])
            nxt = logits[torch.arange(len(rows)), last].argmax(-1).tolist()
            still = []
            for i, t in zip(live, nxt):
                if t == eot:
                    continue
                seqs[i].append(t)
                out[lo + i].append(t)
                if t not in nl and len(out[lo + i]) < limit[lo + i]:
                    still.append(i)
            live = still
    return out


def _first_line(tok, ids) -> str:
    return tok.decode(ids).split("\n")[0].strip()


def answer_greedy(model, tok, question: str, max_new_tokens: int = 24,
                  gen_prompt: str | None = None) -> str:
    """Greedy reply of a torch ``model`` to ``question`` in the chat template (the engine's
    prompt tokens, :func:`chat_prompt_ids`), until the end of turn, a newline or
    ``max_new_tokens``."""
    return answers_greedy(model, tok, [question], max_new_tokens, gen_prompt)[0]


def answers_greedy(model, tok, questions, max_new_tokens=24,
                   gen_prompt: str | None = None) -> list[str]:
    """:func:`answer_greedy` of several questions, decoded as one batch."""
    gp = generation_prompt() if gen_prompt is None else gen_prompt
    new = greedy_batch(model, tok, [chat_prompt_ids(tok, q, gp) for q in questions],
                       max_new_tokens)
    return [_first_line(tok, ids) for ids in new]


def plain_answers(model, tok, items, max_new_tokens: int = 16) -> list[str]:
    """The base model's answers in *plain text*, no chat template: the greedy continuation of
    the item's ``plain`` prompt (``"Joshua the son of"``, ``"Salmon begat"``, a verse's first
    part) up to its first punctuation mark or newline; for ``verse_end`` its first word only
    (plain text does not say the verse ends there: the word that comes next is what the base
    knows).  What pre-training alone knows: the ceiling a chat fine-tune can reach by teaching
    the format."""
    bos = tok.token_to_id(CHAT_EOT)
    new = greedy_batch(model, tok, [[bos] + tok.encode(it["plain"]).ids for it in items],
                       _limits(tok, items, max_new_tokens))
    out = [re.split(r"[,;:.?!]", _first_line(tok, ids), maxsplit=1)[0].strip() for ids in new]
    return [" ".join(a.split()[:len(it["answer"].split())]) if it["kind"] == "verse_end" else a
            for it, a in zip(items, out)]


def _norm(s: str) -> str:
    return " ".join(s.split()).strip().rstrip(".,;:!?").casefold()


def _words(s: str) -> list[str]:
    return [w.strip(".,;:!?'\"()") for w in _norm(s).split()]


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style word F1 of a prediction against the reference (after :func:`_norm`)."""
    p, r = _words(pred), _words(ref)
    common = sum(min(p.count(w), r.count(w)) for w in set(p))
    if not p or not r or not common:
        return float(p == r)
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def score_answers(items, answers) -> dict:
    """Exact match (whitespace collapsed, case-folded, trailing punctuation dropped), first-word
    accuracy and word F1 of ``answers`` against ``items``' references.  Returns
    ``{"exact_match", "first_word", "f1", "n", "by_kind": {kind: (hits, n)}, "table":
    {kind: {"em", "first_word", "f1", "n"}, ... "all": ...}, "by_seen": {"kind/seen|unseen":
    same}, "empty": how many answers are empty, "examples": first five (question, reference,
    answer), "answers"}``."""
    rows = []
    for it, a in zip(items, answers):
        rows.append((it["kind"], it.get("seen_in_pretraining", True),
                     _norm(a) == _norm(it["answer"]), _words(a)[:1] == _words(it["answer"])[:1],
                     token_f1(a, it["answer"])))

    def agg(sel):
        n = len(sel)
        if not n:
            return {"em": float("nan"), "first_word": float("nan"), "f1": float("nan"), "n": 0}
        return {"em": sum(r[2] for r in sel) / n, "first_word": sum(r[3] for r in sel) / n,
                "f1": sum(r[4] for r in sel) / n, "n": n}

    kinds = [k for k in CHAT_KINDS if any(r[0] == k for r in rows)] + sorted(
        {r[0] for r in rows} - set(CHAT_KINDS))
    table = {k: agg([r for r in rows if r[0] == k]) for k in kinds}
    table["all"] = agg(rows)
    by_seen = {f"{k}/{'seen' if s else 'unseen'}": agg([r for r in rows if r[0] == k and r[1] == s])
               for k in kinds for s in (True, False)}
    by_seen = {k: v for k, v in by_seen.items() if v["n"]}
    by_kind = {k: (sum(r[2] for r in rows if r[0] == k), table[k]["n"]) for k in kinds}
    return {"exact_match": table["all"]["em"], "first_word": table["all"]["first_word"],
            "f1": table["all"]["f1"], "n": len(rows), "by_kind": by_kind, "table": table,
            "empty": sum(not _norm(a) for a in answers),
            "by_seen": by_seen,
            "examples": [(it["question"], it["answer"], a) for it, a in zip(items[:5], answers)],
            "answers": list(answers)}


def _limits(tok, items, max_new_tokens: int) -> list[int]:
    """Tokens to decode per item: the reference's + 4 (a longer answer cannot match), at most
    ``max_new_tokens``: most of the decoding time goes to answers that ramble."""
    return [min(max_new_tokens, len(tok.encode(" " + it["answer"]).ids) + 4) for it in items]


def exact_match(model, tok, items, max_new_tokens: int = 24, gen_prompt: str | None = None) -> dict:
    """Greedy chat answers of a torch ``model`` to ``items`` scored by :func:`score_answers`
    (exact match, first word, word F1, by kind and by ``seen_in_pretraining``).  Each answer is
    decoded for at most its reference's tokens + 4 (:func:`_limits`)."""
    return score_answers(items, answers_greedy(model, tok, [it["question"] for it in items],
                                               _limits(tok, items, max_new_tokens), gen_prompt))


def plain_text_match(model, tok, items, max_new_tokens: int = 16) -> dict:
    """:func:`plain_answers` scored like :func:`exact_match`: the plain-text ceiling."""
    return score_answers(items, plain_answers(model, tok, items, max_new_tokens))


#: chat ``--fast`` and full settings: steps, batch, eval items per genealogy kind (all of them
#: when None), ``verse`` and ``verse_end`` items (``verse_end`` is the one exact match can move,
#: so it gets enough items to tell 5 points from noise), every n-th verse item kept for
#: training, LoRA shape and lr.
CHAT_SETTINGS = {
    "fast": dict(steps=40, batch_size=16, n_verse_eval=8, n_gen_eval=8, n_verse_end_eval=16,
                 verse_every=16, r=8, alpha=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                 lr=3e-3),
    "full": dict(steps=400, batch_size=16, n_verse_eval=60, n_gen_eval=None,
                 n_verse_end_eval=400, verse_every=8, r=8, alpha=16,
                 targets=("q_proj", "k_proj", "v_proj", "o_proj"), lr=3e-3),
}


def chat_eval_items(n_verse: int = 200, n_gen: int | None = None,
                    n_verse_end: int | None = None) -> list[dict]:
    """The held-out items :func:`train_chat_adapter` scores, in :data:`CHAT_KINDS` order: of
    each genealogy kind all (or an evenly spaced ``n_gen``), ``n_verse`` evenly spaced
    ``verse`` items and ``n_verse_end`` (default ``n_verse``) ``verse_end`` items."""
    n_verse_end = n_verse if n_verse_end is None else n_verse_end
    out = []
    for k in CHAT_KINDS:
        n = {"verse": n_verse, "verse_end": n_verse_end}.get(k, n_gen)
        out += kjv_chat_items("val", kinds=(k,), max_items=n)
    return out


def train_chat_adapter(fast: bool = True, *, model_dir=None, master=None,
                       lora: LoraConfig | None = None, lr: float | None = None,
                       steps: int | None = None, out_dir=None, progress: bool = True,
                       kinds=CHAT_KINDS, threads: int = 2) -> dict:
    """Train a LoRA chat adapter on the KJV question/answer set (loss on the answer tokens
    only); held-out exact match before and after, and the base model's plain-text ceiling.

    Returns ``{"before", "after", "plain", "train_sample", "sizes", "settings", "history"}``
    (:func:`score_answers` dicts) and saves the adapter to ``out_dir`` if given."""
    st = dict(CHAT_SETTINGS["fast" if fast else "full"])
    if steps is not None:
        st["steps"] = steps
    if lr is not None:
        st["lr"] = lr
    lora = lora or LoraConfig(r=st["r"], lora_alpha=st["alpha"], target_modules=st["targets"])
    torch.set_num_threads(threads)
    tok = load_tokenizer(model_dir)
    gp = generation_prompt(model_dir)
    train_items = kjv_chat_items("train", kinds=kinds, verse_every=st["verse_every"])
    val_items = chat_eval_items(st["n_verse_eval"], st["n_gen_eval"], st["n_verse_end_eval"])
    say = print if progress else (lambda *a, **k: None)
    sizes = {"train": {k: sum(i["kind"] == k for i in train_items) for k in CHAT_KINDS},
             "val": {k: len(kjv_chat_items("val", kinds=(k,))) for k in CHAT_KINDS},
             "val_evaluated": {k: sum(i["kind"] == k for i in val_items) for k in CHAT_KINDS}}
    say(f"chat set: {sizes}; generation prompt {gp!r}", flush=True)
    base = load_bitnet_lm(model_dir, master=master)
    torch.manual_seed(0)
    model = fast_frozen(add_lora(base, lora))  # B = 0: the base model's outputs, bit for bit
    t0 = time.perf_counter()
    plain = plain_text_match(model, tok, val_items)
    before = exact_match(model, tok, val_items, gen_prompt=gp)  # B = 0: the base model's answers
    t_eval = time.perf_counter() - t0
    say(f"  plain text: exact match {plain['exact_match']:.2%}; chat before: "
        f"{before['exact_match']:.2%} ({t_eval:.0f}s)", flush=True)
    fc = FinetuneConfig(steps=st["steps"], batch_size=st["batch_size"], lr=st["lr"],
                        warmup=max(1, st["steps"] // 10), threads=threads)
    say(f"  LoRA r={lora.r} alpha={lora.lora_alpha} on {','.join(lora.target_modules)}: "
        f"{trainable_parameters(model)['trainable']:,} parameters; {fc.steps} steps x "
        f"{fc.batch_size}, lr {fc.lr:g}", flush=True)
    hist = finetune(model, chat_batches(train_items, tok, fc.batch_size, fc.seed, gen_prompt=gp),
                    fc, progress=progress)
    after = exact_match(model, tok, val_items, gen_prompt=gp)
    train_em = exact_match(model, tok, train_items[:: max(1, len(train_items) // 40)][:40],
                           gen_prompt=gp)
    res = {"before": before, "after": after, "plain": plain, "train_sample": train_em,
           "sizes": sizes,
           "settings": {**st, "lr": fc.lr, "r": lora.r, "alpha": lora.lora_alpha,
                        "targets": list(lora.target_modules), "generation_prompt": gp,
                        "train_seconds": hist["seconds"], "threads": threads},
           "history": {"loss": hist["loss"], "seconds": hist["seconds"]}}
    say(format_chat(res))
    for (q, ref, _), a in list(zip(after["examples"], after["answers"]))[:3]:
        say(f"    {q!r} -> {a!r} (reference {ref!r})")
    if out_dir is not None:
        save_adapter(model, Path(out_dir), base_model_name_or_path=_base_name(model_dir))
    return res


def _base_name(model_dir=None) -> str:
    """The adapter's ``base_model_name_or_path``: the shipped model by its package path
    (``bitnet_edu/default_model``), not this machine's absolute one."""
    d = Path(model_dir or default_model_dir()).resolve()
    try:
        return str(d.relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        return str(d)


def format_chat(res: dict) -> str:
    """A text table of :func:`train_chat_adapter`'s result: exact match (first-word accuracy)
    by kind for the plain-text ceiling, the chat template before and after, and by
    ``seen_in_pretraining``."""
    cols = [("plain text", res["plain"]), ("chat before", res["before"]),
            ("chat after", res["after"])]
    lines = [f"{'held-out':<16}{'n':>5}" + "".join(f"{c:>22}" for c, _ in cols),
             " " * 21 + "".join(f"{'EM   first-word':>22}" for _ in cols)]
    keys = list(res["after"]["table"]) + list(res["after"]["by_seen"])
    for k in keys:
        get = (lambda r: r["table"][k]) if k in res["after"]["table"] else (
            lambda r: r["by_seen"][k])
        n = get(res["after"])["n"]
        lines.append(f"{k:<16}{n:>5}" + "".join(
            f"{get(r)['em']:>15.1%}{get(r)['first_word']:>7.0%}" for _, r in cols))
    s = res["settings"]
    lines.append(f"train sample exact match {res['train_sample']['exact_match']:.1%}; "
                 f"{s['steps']} steps x {s['batch_size']}, lr {s['lr']:g}, r={s['r']}, "
                 f"alpha={s['alpha']}, {','.join(s['targets'])}; "
                 f"{s['train_seconds']:.0f}s on {s['threads']} threads")
    return "\n".join(lines)


def chat_model_card(res: dict, command: str) -> str:
    """The README.md of a chat adapter: data, split, settings, the before/after table and the
    command that reproduces it."""
    s, z = res["settings"], res["sizes"]
    return (
        "---\nlibrary_name: peft\nbase_model: bitnet_edu/default_model\n---\n\n"
        "# bitnet_edu chat adapter (KJV questions)\n\n"
        "A LoRA adapter (PEFT format) for the shipped 6-layer BitNet b1.58 model "
        "(`bitnet_edu/default_model`) that makes it answer in the chat template the engine "
        f"writes (`User: ...<|eot_id|>{s['generation_prompt']}`, then ` answer<|endoftext|>`).  "
        "The ternary base is untouched; the adapter is a float side path.\n\n"
        "## Data\n\nQuestion/answer pairs generated offline from the KJV itself "
        "(`bitnet_edu.train.finetune_data.kjv_chat_items`):\n\n"
        "* `son_of`: \"Who was the father of Y?\" where the corpus writes \"Y the son of X\" "
        "(forward: the question's name comes first in the text too);\n"
        "* `begat`: \"Whom did X beget?\" from \"X begat Y\" (forward);\n"
        "* `father`: \"Who was the father of Y?\" where the corpus only writes \"X begat Y\" "
        "(the reverse direction: kept as a measured contrast, the reversal curse);\n"
        "* `passage`: the verse that states a genealogy fact, then \"Who was the father of "
        "Y?\" (open book: the answer is in the prompt);\n"
        "* `verse`: \"Finish the verse: <verse up to its last clause>\" -> that clause "
        "(2-8 words);\n"
        "* `verse_end`: \"Finish the verse: <verse without its last word>\" -> that word.\n\n"
        "Split: one in five facts (genealogies: by father>son pair, so a question and its "
        "reverse fall on the same side; verses: by the verse, so its `verse` and `verse_end` "
        "questions fall on the same side) is held out, by a hash.  "
        f"Training items: {z['train']}; held-out: {z['val']}; evaluated: "
        f"{z['val_evaluated']}.\n\n"
        "## Settings\n\n"
        f"LoRA r={s['r']}, lora_alpha={s['alpha']}, on {', '.join(s['targets'])} of all 6 "
        f"layers; loss on answer tokens only; AdamW lr {s['lr']:g} (warmup, cosine), "
        f"{s['steps']} steps x {s['batch_size']} items; {s['train_seconds']:.0f} s of training "
        f"on {s['threads']} CPU threads.\n\n"
        "## Held-out results\n\nExact match (whitespace, case and trailing punctuation "
        "ignored) and first-word accuracy, greedy decoding.  *plain text*: the base model "
        "continuing the corpus phrase (\"Joshua the son of\", \"Salmon begat\", the verse's "
        "first part) with no template, the ceiling of what the chat format can surface.\n\n"
        "```\n" + format_chat(res) + "\n```\n\n"
        f"Reproduce:\n\n```\n{command}\n```\n\n"
        "Load: `bitnet_edu.load_model(adapter=\"chat\")` (the engine), "
        "`bitnet_edu.train.lora.load_adapter(load_bitnet_lm(), \"bitnet_edu/adapters/chat\")`"
        " (torch), or `peft.PeftModel.from_pretrained(HFCausalLM(load_bitnet_lm()), ...)`.\n\n"
        + _card_findings(res))


def _pct(r: dict, k: str, col: str = "em") -> str:
    t = r["table"].get(k)
    return "-" if t is None else f"{t[col]:.1%}"


def _card_findings(res: dict) -> str:
    """The model card's reading of the table, every number taken from ``res``."""
    b, a, p = res["before"], res["after"], res["plain"]
    gen = [k for k in ("son_of", "begat", "father", "passage") if k in a["table"]]
    out = ["## What this adapter does and does not do\n\n"]
    if "empty" in b:
        out.append(f"Format: asked in the chat template, the base answers an empty line on "
                   f"{b['empty']} of {b['n']} held-out questions (it ends the turn or breaks the "
                   f"line at once), the adapter on {a['empty']}: it answers a short name, clause "
                   f"or word and ends the turn with `<|endoftext|>`.\n\n")
    if "verse_end" in a["table"]:
        n = a["table"]["verse_end"]["n"]
        up = a["table"]["verse_end"]["em"] > b["table"]["verse_end"]["em"]
        out.append(f"Exact match {'rises' if up else 'does not rise'} where the base knows the "
                   f"answer: on {n} held-out "
                   f"`verse_end` questions (a verse's last word) it goes from "
                   f"{_pct(b, 'verse_end')} to {_pct(a, 'verse_end')}, against a plain-text "
                   f"ceiling of {_pct(p, 'verse_end')} (the base continuing the verse with no "
                   f"template).  ")
    if "verse" in a["table"]:
        out.append(f"On `verse` (the last clause, 2-8 words) exact match is "
                   f"{_pct(b, 'verse')} -> {_pct(a, 'verse')} (first word "
                   f"{_pct(b, 'verse', 'first_word')} -> {_pct(a, 'verse', 'first_word')}, "
                   f"plain-text ceiling {_pct(p, 'verse')} exact, "
                   f"{_pct(p, 'verse', 'first_word')} first word).  ")
    if gen:
        out.append("On the genealogies (" + ", ".join(
            f"`{k}` {_pct(b, k)} -> {_pct(a, k)}, plain text {_pct(p, k)}" for k in gen) + ")")
        closed = [k for k in gen if k != "passage"]
        if closed and max(p["table"][k]["em"] for k in closed) < 0.1:
            out.append(" there is little to surface: the base does not know them even in "
                       "plain text")
        if "passage" in gen and a["table"]["passage"]["em"] <= b["table"]["passage"]["em"]:
            out.append("; the open-book `passage` kind (the answer is in the prompt) is not "
                       f"learned in {res['settings']['steps']} steps either")
        out.append(".")
    return "".join(out).rstrip() + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bitnet_edu.train.lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("compare", "chat"))
    p.add_argument("--fast", action="store_true", help="small settings (about a minute)")
    p.add_argument("--model", default=None, help="HF model directory (default: the shipped one)")
    p.add_argument("--master", default=None,
                   help="training checkpoint.pt of that model: start from its latent weights")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--r", type=int, default=None, help="LoRA rank (compare 8; chat: its setting)")
    p.add_argument("--alpha", type=float, default=None, help="lora_alpha (default 2 r)")
    p.add_argument("--targets", default=None,
                   help="comma-separated projections (compare: all seven; chat: q,k,v,o_proj)")
    p.add_argument("--kinds", default=",".join(CHAT_KINDS),
                   help=f"chat: question kinds to train on (of {','.join(CHAT_KINDS)})")
    p.add_argument("--lr-lora", type=float, default=None,
                   help="LoRA peak learning rate (compare 2e-3; chat: its setting)")
    p.add_argument("--lr-qat", type=float, default=3e-4)
    p.add_argument("--out", default=None,
                   help="compare: write the adapter and compare.json here; chat: the adapter "
                        "directory (adapter_config.json, adapter_model.safetensors, chat.json)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    base_path = str(a.model or default_model_dir())
    if a.command == "compare":
        r = a.r or 8
        cfg = LoraConfig(r=r, lora_alpha=a.alpha or 2 * r, base_model_name_or_path=base_path,
                         **({"target_modules": tuple(a.targets.split(","))} if a.targets else {}))
        res = compare(a.fast, model_dir=a.model, master=a.master, lora=cfg,
                      lr_lora=a.lr_lora or 2e-3, lr_qat=a.lr_qat, steps=a.steps, out_dir=a.out)
        print(format_compare(res))
        return res
    st = CHAT_SETTINGS["fast" if a.fast else "full"]
    r = a.r or st["r"]
    cfg = LoraConfig(r=r, lora_alpha=a.alpha or (st["alpha"] if a.r is None else 2 * r),
                     target_modules=tuple(a.targets.split(",")) if a.targets else st["targets"],
                     base_model_name_or_path=base_path)
    res = train_chat_adapter(a.fast, model_dir=a.model, master=a.master, lora=cfg, lr=a.lr_lora,
                             steps=a.steps, out_dir=a.out, kinds=tuple(a.kinds.split(",")),
                             threads=a.threads)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "chat.json").write_text(json.dumps(
            {k: ({kk: vv for kk, vv in v.items() if kk != "answers"} if isinstance(v, dict)
                 else v) for k, v in res.items() if k != "history"}, indent=2) + "\n")
        cmd = "python -m bitnet_edu.train.lora " + " ".join(
            x for x in (argv if argv is not None else __import__("sys").argv[1:]))
        (Path(a.out) / "README.md").write_text(chat_model_card(res, cmd))
    return res


if __name__ == "__main__":
    main()
