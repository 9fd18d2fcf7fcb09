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
(:func:`~bitnet_edu.train.finetune_data.kjv_chat_items`), loss on the answer tokens only, and
reports held-out exact match before and after (greedy decoding until ``<|endoftext|>``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data import encode_texts, get_batch, split_texts
from .evaluate import bits_per_char
from .finetune_data import CHAT_EOT, chat_text, kjv_chat_items, stdlib_docs, stdlib_docs_info
from .import_hf import default_model_dir, load_bitnet_lm
from .adapter import (LoraConfig, add_lora, lora_layers, merge_report, merged_model, save_adapter,
                   trainable_parameters)

__all__ = ["FinetuneConfig", "finetune", "token_batches", "load_tokenizer", "compare",
           "format_compare", "chat_batches", "answer_greedy", "exact_match",
           "train_chat_adapter", "main"]


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


# --- chat ---------------------------------------------------------------------------------------

def _encode_item(tok, item, n_ctx: int):
    """``(ids, n_prompt)``: bos + prompt + answer + end-of-turn token ids, prompt length."""
    bos = tok.token_to_id(CHAT_EOT)
    # the template ends "Assistant: "; byte-level BPE puts a word's space in front of it
    # ("ĠZadok"), so the prompt's tokens stop before that space and the answer's first token
    # carries it: the text is the template's, the tokens are the ones pre-training saw
    prompt = [bos] + tok.encode(chat_text(item["question"]).rstrip(" ")).ids
    full = [bos] + tok.encode(chat_text(item["question"], item["answer"])).ids
    if full[:len(prompt)] != prompt:  # BPE merged across the prompt/answer boundary
        ans = tok.encode(item["answer"]).ids + [bos]
        full = prompt + ans
    return full[:n_ctx + 1], len(prompt)


def chat_batches(items, tok, batch_size: int, seed: int = 0, n_ctx: int = 256):
    """``batch(step) -> (x, y)`` int64 ``[B, T]``: ``batch_size`` random items, right-padded;
    ``y`` is the next token on answer positions (answer + end of turn) and -100 elsewhere."""
    enc = [_encode_item(tok, it, n_ctx) for it in items]

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


@torch.no_grad()
def answer_greedy(model, tok, question: str, max_new_tokens: int = 40) -> str:
    """Greedy reply of a torch ``model`` to ``question`` in the chat template, until the
    end-of-turn token (``<|endoftext|>``), a newline or ``max_new_tokens``."""
    eot = tok.token_to_id(CHAT_EOT)
    ids = [eot] + tok.encode(chat_text(question).rstrip(" ")).ids  # see _encode_item
    n = model.cfg.max_position_embeddings
    model.eval()
    new = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids[-n:]]))[0, -1]
        nxt = int(logits.argmax())
        if nxt == eot:
            break
        ids.append(nxt)
        new.append(nxt)
        if "\n" in tok.decode(new[-1:]):
            break
    return tok.decode(new).split("\n")[0].strip()


def _norm(s: str) -> str:
    return " ".join(s.split()).strip().rstrip(".,;:!?").casefold()


def exact_match(model, tok, items, max_new_tokens: int = 40) -> dict:
    """Fraction of ``items`` whose greedy answer equals the reference (whitespace collapsed,
    case-folded, trailing punctuation dropped).  Returns ``{"exact_match", "n", "by_kind":
    {kind: (hits, n)}, "examples": first five (question, reference, answer)}``."""
    hits, by_kind, ex = 0, {}, []
    for it in items:
        a = answer_greedy(model, tok, it["question"], max_new_tokens)
        ok = _norm(a) == _norm(it["answer"])
        hits += ok
        h, n = by_kind.get(it["kind"], (0, 0))
        by_kind[it["kind"]] = (h + ok, n + 1)
        if len(ex) < 5:
            ex.append((it["question"], it["answer"], a))
    return {"exact_match": hits / len(items) if items else float("nan"), "n": len(items),
            "by_kind": by_kind, "examples": ex}


#: chat ``--fast`` and full settings.
CHAT_SETTINGS = {
    "fast": dict(steps=60, batch_size=16, n_eval=40, verse_every=4),
    "full": dict(steps=400, batch_size=16, n_eval=200, verse_every=1),
}


def train_chat_adapter(fast: bool = True, *, model_dir=None, master=None,
                       lora: LoraConfig | None = None, lr: float = 2e-3,
                       steps: int | None = None, out_dir=None, progress: bool = True) -> dict:
    """Train a LoRA chat adapter on the KJV question/answer set; held-out exact match before and
    after.  Returns ``{"before", "after", "sizes", "settings", "history"}`` (and saves the
    adapter to ``out_dir/chat_adapter`` if given)."""
    st = dict(CHAT_SETTINGS["fast" if fast else "full"])
    if steps is not None:
        st["steps"] = steps
    tok = load_tokenizer(model_dir)
    train_items = kjv_chat_items("train", verse_every=st["verse_every"])
    val_all = kjv_chat_items("val")
    # held-out evaluation: all genealogy questions, then evenly spaced verses
    fathers = [i for i in val_all if i["kind"] == "father"]
    verses = kjv_chat_items("val", kinds=("verse",), max_items=max(0, st["n_eval"] - len(fathers)))
    val_items = fathers + verses
    say = print if progress else (lambda *a, **k: None)
    sizes = {"train": len(train_items), "val": len(val_all), "val_evaluated": len(val_items),
             "train_father": sum(i["kind"] == "father" for i in train_items),
             "val_father": len(fathers)}
    say(f"chat set: {sizes}", flush=True)
    base = load_bitnet_lm(model_dir, master=master)
    torch.manual_seed(0)
    model = add_lora(base, lora or LoraConfig())
    before = exact_match(model, tok, val_items)  # B = 0: the base model's answers
    say(f"  before: exact match {before['exact_match']:.2%} {before['by_kind']}", flush=True)
    fc = FinetuneConfig(steps=st["steps"], batch_size=st["batch_size"], lr=lr,
                        warmup=max(1, st["steps"] // 10))
    hist = finetune(model, chat_batches(train_items, tok, fc.batch_size, fc.seed), fc,
                    progress=progress)
    after = exact_match(model, tok, val_items)
    train_em = exact_match(model, tok, train_items[:: max(1, len(train_items) // 40)][:40])
    say(f"  after:  exact match {after['exact_match']:.2%} {after['by_kind']}  "
        f"(train sample {train_em['exact_match']:.2%})", flush=True)
    for q, ref, a in after["examples"][:3]:
        say(f"    {q!r} -> {a!r} (reference {ref!r})")
    if out_dir is not None:
        save_adapter(model, Path(out_dir) / "chat_adapter",
                     base_model_name_or_path=str(model_dir or default_model_dir()))
    return {"before": before, "after": after, "train_sample": train_em, "sizes": sizes,
            "settings": {**st, "lr": lr}, "history": {"loss": hist["loss"],
                                                      "seconds": hist["seconds"]}}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bitnet_edu.train.lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("compare", "chat"))
    p.add_argument("--fast", action="store_true", help="small settings (about a minute)")
    p.add_argument("--model", default=None, help="HF model directory (default: the shipped one)")
    p.add_argument("--master", default=None,
                   help="training checkpoint.pt of that model: start from its latent weights")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--lr-lora", type=float, default=2e-3)
    p.add_argument("--lr-qat", type=float, default=3e-4)
    p.add_argument("--out", default=None, help="write the adapter(s) and a JSON result here")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha,
                     base_model_name_or_path=str(a.model or default_model_dir()))
    if a.command == "compare":
        res = compare(a.fast, model_dir=a.model, master=a.master, lora=cfg, lr_lora=a.lr_lora,
                      lr_qat=a.lr_qat, steps=a.steps, out_dir=a.out)
        print(format_compare(res))
        return res
    res = train_chat_adapter(a.fast, model_dir=a.model, master=a.master, lora=cfg, lr=a.lr_lora,
                             steps=a.steps, out_dir=a.out)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "chat.json").write_text(json.dumps(
            {k: v for k, v in res.items() if k != "history"}, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
