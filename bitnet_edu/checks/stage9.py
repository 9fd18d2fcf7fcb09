"""Checks for Lesson 09 (fine-tuning a ternary model): the LoRA forward on a frozen BitLinear,
the number of trainable parameters of an adapter, and what merging an adapter into ternary
weights does.

Each check computes the right answer first, runs the student's code on copies, and when the
result is wrong compares it with the classic mistakes, so a FAIL names the mistake:

* LoRA forward: the scaling ``alpha / r`` forgotten, inverted (``r / alpha``) or taken as
  ``alpha`` alone; ``B`` and ``A`` multiplied in the wrong order or untransposed; dropout applied
  to the frozen path (or not at all); the update added to the frozen layer's *input* (it then
  goes through the int8 activations and the ternary weights); the scaling applied to the base
  output too; only the update returned;
* trainable parameters: the frozen base counted; ``A`` counted but not ``B`` (or the reverse);
  one layer instead of all of them; the full ``out x in`` matrices (that is a full fine-tune of
  the targets); ``hidden_size`` used for every shape (k/v are narrower under GQA, the MLP wider);
* merge effect: the off-grid fraction instead of the on-grid one; the codes tested instead of
  the merged weight; the grid taken as ``{-1, 0, 1}`` instead of ``{-s, 0, s}``; the scale
  re-derived with absmean; the update kept measured from the merged weight, as a ratio of
  norms, without the scale, or divided by ``|D|`` instead of ``|D|^2``;
* both directions (design): a held-out question trained on; one question with two answers (one
  item per son); the reverse direction left out (the reversal curse, Berglund et al. 2023,
  arXiv:2309.12288); repeated facts kept twice; a son with two fathers given a reverse item; the
  sons out of the text's order.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np

from ._core import check, expect_close, student_call

__all__ = ["check_lora_forward", "check_lora_trainable", "check_merge_effect",
           "check_both_ways", "deterministic_dropout", "shipped_layer", "join_names",
           "both_ways_reference"]

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@lru_cache(maxsize=1)
def _shipped_weights():
    from .. import DEFAULT_MODEL
    from ..formats.hf import read_hf_checkpoint

    return read_hf_checkpoint(DEFAULT_MODEL)


def shipped_layer(name: str = "model.layers.0.self_attn.q_proj"):
    """``(q int8 [out, in], s float)``: one projection of the shipped model, its ternary codes
    and absmean scale as the packed checkpoint stores them."""
    _, w = _shipped_weights()
    return w[name + ".weight"].astype(np.int8), float(w[name + ".weight_scale"][0])


def deterministic_dropout(p: float = 0.25):
    """A dropout whose mask depends only on each entry's position (so a check can repeat it):
    zeroes about a fraction ``p`` of the entries and scales the rest by ``1 / (1 - p)``, as
    ``nn.Dropout`` does in training."""
    keep = 1.0 - p

    def dropout(x):
        x = np.asarray(x, np.float32)
        k = np.arange(x.size, dtype=np.int64).reshape(x.shape)
        mask = ((k * 7919 + 13) % 100) >= round(p * 100)
        return np.where(mask, x / np.float32(keep), np.float32(0)).astype(np.float32)

    dropout.p = p
    return dropout


# ---- the LoRA forward -------------------------------------------------------------------------

def _identity(x):
    return x


def _lora_cases():
    """(name, base, A, B, alpha, dropout or None, x): a square layer first (so that a wrong
    order of B and A, or the update on the input, gives a value rather than a shape error)."""
    from ..bitlinear import BitLinearInference

    rng = np.random.default_rng(9)
    out = []
    for name, r, alpha, p, shape in (("model.layers.0.self_attn.q_proj", 8, 16, None, (5,)),
                                     ("model.layers.1.self_attn.q_proj", 8, 20, 0.25, (2, 3)),
                                     ("model.layers.0.self_attn.k_proj", 4, 16, None, (3,)),
                                     ("model.layers.2.mlp.down_proj", 16, 8, 0.25, (4,))):
        q, s = shipped_layer(name)
        base = BitLinearInference(q, s)
        n_out, n_in = q.shape
        A = (rng.uniform(-1, 1, (r, n_in)) / math.sqrt(n_in)).astype(np.float32)
        B = (rng.normal(0, 0.05, (n_out, r))).astype(np.float32)
        x = rng.normal(0, 1, shape + (n_in,)).astype(np.float32)
        out.append((name, base, A, B, alpha, deterministic_dropout(p) if p else None, x))
    return out


def _lora_ref(x, base, A, B, alpha, dropout, *, scale="right", order="right", drop="right",
              where="output", only_update=False):
    r = A.shape[0]
    s = {"right": alpha / r, "none": 1.0, "inverse": r / alpha, "alpha": alpha,
         "intdiv": alpha // r}[scale]
    d = dropout or _identity
    h = d(x) if drop in ("right", "both") else x
    if order == "right":
        upd = (h @ A.T) @ B.T
    elif order == "untransposed":  # x @ (B @ A): [in] @ [out, in] only fits a square layer
        upd = h @ (B @ A)
    else:
        raise ValueError(order)
    upd = upd * s
    if only_update:
        return upd
    xb = d(x) if drop in ("base", "both") else x
    if where == "input":
        return base(xb + upd)
    if where == "scaled_all":
        return (base(xb) + upd / s) * s
    return base(xb) + upd


_LORA_MISTAKES = [
    (dict(scale="none"), "the scaling is missing: PEFT multiplies the update by "
                         "lora_alpha / r (2 for r=8, alpha=16)"),
    (dict(scale="inverse"), "you scaled by r / alpha; the LoRA scaling is lora_alpha / r "
                            "(Hu et al. 2021, arXiv:2106.09685, section 4.1)"),
    (dict(scale="alpha"), "you scaled by lora_alpha alone; divide by the rank: scaling = "
                          "lora_alpha / r, so changing r does not change the update's size"),
    (dict(scale="intdiv"), "lora_alpha // r is integer division (20 // 8 = 2, not "
                           "2.5); the scaling is the float lora_alpha / r"),
    (dict(order="untransposed"), "B and A are not transposed: with x of shape [..., in], the "
                                 "update is x @ A.T @ B.T (A is [r, in], B is [out, r])"),
    (dict(drop="base"), "dropout went on the frozen path: PEFT applies lora_dropout to the "
                        "LoRA input only, base_layer(x) sees x unchanged"),
    (dict(drop="both"), "dropout went on the frozen path as well: PEFT applies lora_dropout "
                        "to the LoRA input only, base_layer(x) sees x unchanged"),
    (dict(drop="none"), "the dropout was not applied: the LoRA path is "
                        "B(A(dropout(x))) * scaling"),
    (dict(where="input"), "you added the update to the frozen layer's INPUT: it then goes "
                          "through the int8 activation rounding and the ternary weights. LoRA "
                          "adds B(A(x)) * scaling to the layer's OUTPUT, in float"),
    (dict(where="scaled_all"), "the scaling multiplies the base output too; only the LoRA "
                               "update is scaled: base(x) + B(A(x)) * scaling"),
    (dict(only_update=True), "you returned only the LoRA update; add the frozen layer's "
                             "output base(x)"),
]


def _close(a, b, rtol=1e-4, atol=1e-5) -> bool:
    try:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    except Exception:  # noqa: BLE001
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


@check
def check_lora_forward(lora_forward):
    """``lora_forward(x, base, A, B, alpha, dropout=None) -> y``: the frozen layer's output
    ``base(x)`` plus the LoRA update ``dropout(x) @ A.T @ B.T * (alpha / r)``, ``r = A.shape[0]``
    (``dropout`` None: no dropout)."""
    cases = _lora_cases()
    for name, base, A, B, alpha, dropout, x in cases:
        want = _lora_ref(x, base, A, B, alpha, dropout)
        got = student_call(lora_forward, x, base, A, B, alpha, dropout)
        what = (f"lora_forward on {name} (x {list(x.shape)}, r={A.shape[0]}, alpha={alpha}"
                f"{', dropout p=' + str(dropout.p) if dropout else ''})")
        if got is None:
            raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
        if _close(got, want):
            continue
        for kw, message in _LORA_MISTAKES:
            try:
                bad = _lora_ref(x, base, A, B, alpha, dropout, **kw)
            except ValueError:  # that mistake does not fit this layer's shape
                continue
            if not _close(bad, want) and _close(got, bad):
                raise AssertionError(f"{what}: {message}")
        expect_close(got, want, what, rtol=1e-4, atol=1e-5)
    # B = 0 (a fresh adapter) changes nothing
    name, base, A, B, alpha, _, x = cases[0]
    got = student_call(lora_forward, x, base, A, np.zeros_like(B), alpha, None)
    expect_close(got, base(x), f"lora_forward with B = 0 on {name} (a fresh adapter: the output "
                               f"must be base(x) exactly)", rtol=1e-4, atol=1e-5)


# ---- trainable parameters ---------------------------------------------------------------------

def _config(name):
    from ..config import BitNetConfig

    if name == "2b4t":
        return BitNetConfig.preset("2b4t")
    from .. import DEFAULT_MODEL

    return BitNetConfig.from_json(f"{DEFAULT_MODEL}/config.json")


def _count(cfg, r, targets, *, part="both", layers=None, base=False, full=False, hidden=False):
    shapes = cfg.linear_shapes()
    n = cfg.num_hidden_layers if layers is None else layers
    total = 0
    for t in targets:
        o, i = (cfg.hidden_size, cfg.hidden_size) if hidden else shapes[t]
        if full:
            total += o * i
            continue
        total += r * {"both": i + o, "A": i, "B": o}[part]
    total *= n
    if base:
        total += cfg.param_counts()["total"]
    return total


_COUNT_MISTAKES = [
    (dict(base=True), "you counted the frozen base as well: only lora_A and lora_B train "
                      "(requires_grad=True); the ternary weights, embedding and norms are frozen"),
    (dict(part="A"), "you counted lora_A ([r, in]) but not lora_B ([out, r]): each adapted "
                     "projection trains r x (in + out) numbers"),
    (dict(part="B"), "you counted lora_B ([out, r]) but not lora_A ([r, in]): each adapted "
                     "projection trains r x (in + out) numbers"),
    (dict(layers=1), "that is ONE layer's adapter; every one of the num_hidden_layers layers "
                     "has its own q/k/v/o/gate/up/down, so multiply by the layer count"),
    (dict(full=True), "you counted the whole out x in matrices: that is a full fine-tune of the "
                      "targets; LoRA trains r x (in + out) per projection"),
    (dict(hidden=True), "you used hidden_size for every projection's in and out; take each "
                        "shape from config.linear_shapes(): k_proj/v_proj are narrower (GQA: "
                        "num_key_value_heads x head_dim), gate/up/down are hidden x "
                        "intermediate"),
]

_COUNT_CASES = [("default", 8, TARGETS), ("default", 4, ("q_proj", "v_proj")),
                ("2b4t", 32, TARGETS), ("2b4t", 16, ("k_proj", "gate_proj", "down_proj"))]


@check
def check_lora_trainable(lora_trainable):
    """``lora_trainable(config, r, targets) -> int``: the number of trainable parameters of a
    LoRA adapter of rank ``r`` on the projections named in ``targets`` of every layer."""
    for cfg_name, r, targets in _COUNT_CASES:
        cfg = _config(cfg_name)
        want = _count(cfg, r, targets)
        got = student_call(lora_trainable, cfg, r, tuple(targets))
        what = (f"lora_trainable({'2B4T' if cfg_name == '2b4t' else 'the shipped model'}'s "
                f"config, r={r}, targets={list(targets)})")
        if got is None:
            raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, (numbers.Integral,
                                                                     numbers.Real)):
            raise AssertionError(f"{what}: expected an int, got {type(got).__name__}")
        if float(got) == want:
            continue
        for kw, message in _COUNT_MISTAKES:
            bad = _count(cfg, r, targets, **kw)
            if bad != want and float(got) == bad:
                raise AssertionError(f"{what}: {message}")
        raise AssertionError(f"{what}: expected {want:,}, got {got:,}")


# ---- what merging does ------------------------------------------------------------------------

def _merge_ref(q, s, delta, *, absmean=False):
    from ..quant import absmean_ternary

    w0 = q.astype(np.float64) * s
    d = np.asarray(delta, np.float64)
    m = w0 + d
    grid = np.clip(np.round(m / s), -1, 1) * s
    on_grid = float(np.isclose(m, grid, rtol=0, atol=1e-6 * s).mean())
    if absmean:
        q1, s1 = absmean_ternary(m.astype(np.float32))
    else:
        q1, s1 = np.clip(np.round(m / s), -1, 1).astype(np.int8), s
    dd = float((d * d).sum())
    kept = float(((q1.astype(np.float64) * s1 - w0) * d).sum() / dd)
    return {"on_grid": on_grid, "codes_changed": float((q1 != q).mean()), "update_kept": kept,
            "_q1": q1, "_s1": s1, "_w0": w0, "_d": d, "_m": m}


def _merge_cases():
    """(name, q, s, delta): real ternary codes; low-rank updates of a trained adapter's size
    and of a much larger one, and one whose B has zero rows (those outputs stay on the grid)."""
    rng = np.random.default_rng(19)
    out = []
    for name, r, rel, zero_rows in (("model.layers.1.self_attn.v_proj", 4, 0.3, 40),
                                    ("model.layers.3.mlp.up_proj", 8, 0.6, 0),
                                    ("model.layers.0.self_attn.q_proj", 8, 0.05, 0)):
        q, s = shipped_layer(name)
        A = rng.normal(0, 1, (r, q.shape[1]))
        B = rng.normal(0, 1, (q.shape[0], r))
        if zero_rows:
            B[:zero_rows] = 0
        d = B @ A
        d *= rel * np.linalg.norm(q * s) / np.linalg.norm(d)
        out.append((name, q, s, d.astype(np.float32)))
    return out


def _merge_mistakes(q, s, delta, want):
    ref = _merge_ref(q, s, delta)
    w0, d, m, q1 = ref["_w0"], ref["_d"], ref["_m"], ref["_q1"]
    dd = float((d * d).sum())
    am = _merge_ref(q, s, delta, absmean=True)
    return {
        "on_grid": [
            (1 - want["on_grid"], "that is the fraction OFF the grid; return the fraction of "
                                  "merged weights still in {-s, 0, +s}"),
            (1.0, "every entry of the codes q (or of the re-quantized q') is on the grid by "
                  "construction; test the merged weight q * s + delta"),
            (float(np.isin(m, (-1.0, 0.0, 1.0)).mean()),
             "you compared the merged weight with {-1, 0, 1}; the grid of this layer is "
             "{-s, 0, +s} (the codes times the scale)"),
        ],
        "codes_changed": [
            (am["codes_changed"], "you re-derived the scale with absmean; keep the base's scale "
                                  "s and round the merged weight to ITS grid (mean|q*s| = "
                                  "s * (1 - zeros): a new absmean scale shrinks the layer even "
                                  "with no update)"),
            (float((np.clip(np.round(m / s), -1, 1) != np.round(m / s)).mean()),
             "you counted the entries the clip changed; compare the new codes with the old q"),
        ],
        "update_kept": [
            (am["update_kept"], "you re-derived the scale with absmean; keep the base's scale "
                                "s (the change of scale is not the update)"),
            (float(((q1 * s - m) * d).sum() / dd), "you measured from the merged weight; the "
                                                   "update the shipped weight realizes is "
                                                   "Q - W0 (from the BASE weight q * s)"),
            (float(np.linalg.norm(q1 * s - w0) / math.sqrt(dd)),
             "a ratio of norms |Q - W0| / |D| counts changes in any direction; project on the "
             "update: <Q - W0, D> / <D, D>"),
            (float(((q1 - q).astype(np.float64) * d).sum() / dd),
             "the scale is missing: Q - W0 = (q' - q) * s"),
            (float(((q1 * s - w0) * d).sum() / math.sqrt(dd)),
             "you divided by |D|; divide by <D, D> = |D|^2 so that 1 means the whole update "
             "is kept"),
        ],
    }


@check
def check_merge_effect(merge_effect):
    """``merge_effect(q, s, delta) -> {"on_grid", "codes_changed", "update_kept"}``: for the
    merged weight ``q * s + delta``, the fraction of entries still in ``{-s, 0, +s}``; after
    rounding it to the base's grid (``clip(round(M / s), -1, 1)``, scale ``s`` kept), the
    fraction of codes that changed and ``<Q - W0, D> / <D, D>``."""
    for name, q, s, delta in _merge_cases():
        want = _merge_ref(q, s, delta)
        got = student_call(merge_effect, q, s, delta)
        what = f"merge_effect on {name} (|delta| / |q*s| = {np.linalg.norm(delta) / np.linalg.norm(q * s):.2f})"
        if got is None:
            raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
        if not isinstance(got, dict):
            raise AssertionError(f"{what}: return a dict with keys on_grid, codes_changed, "
                                 f"update_kept; got {type(got).__name__}")
        mistakes = _merge_mistakes(q, s, delta, want)
        for key in ("on_grid", "codes_changed", "update_kept"):
            if key not in got:
                raise AssertionError(f"{what}: the dict has no key {key!r}")
            v = got[key]
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.floating,
                                                                     np.ndarray)):
                raise AssertionError(f"{what}[{key!r}]: expected a float, got {type(v).__name__}")
            v = float(v)
            if math.isclose(v, want[key], rel_tol=1e-3, abs_tol=1e-6):
                continue
            for bad, message in mistakes[key]:
                if (not math.isclose(bad, want[key], rel_tol=1e-3, abs_tol=1e-6)
                        and math.isclose(v, bad, rel_tol=1e-3, abs_tol=1e-6)):
                    raise AssertionError(f"{what}[{key!r}]: {message}")
            raise AssertionError(f"{what}[{key!r}]: expected {want[key]:.6g}, got {v:.6g}")


# ---- design: training questions in both directions --------------------------------------------

FORWARD, REVERSE = "Whom did {} beget?", "Who was the father of {}?"

#: (father, son) as the genealogies state them, in text order: a father with several sons, a
#: repeated fact (Chronicles repeats Genesis), a name two fathers begat (two men called Ethan)
_FACTS = [("Adam", "Seth"), ("Seth", "Enos"), ("Enos", "Cainan"), ("Noah", "Shem"),
          ("Noah", "Ham"), ("Noah", "Japheth"), ("Terah", "Abram"), ("Terah", "Nahor"),
          ("Terah", "Haran"), ("Zerah", "Ethan"), ("Kishi", "Ethan"), ("Noah", "Shem"),
          ("Seth", "Enos")]
_HELD_OUT = {"Who was the father of Enos?", "Whom did Terah beget?"}


def join_names(names) -> str:
    """``"A"``, ``"A and B"``, ``"A, B and C"``."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def both_ways_reference(facts, held_out):
    """The reference design: one forward item per father (his sons once each, in text order),
    one reverse item per son with a single father, no held-out question."""
    sons: dict[str, list] = {}
    fathers: dict[str, list] = {}
    for x, y in facts:
        if y not in sons.setdefault(x, []):
            sons[x].append(y)
        if x not in fathers.setdefault(y, []):
            fathers[y].append(x)
    items = [{"question": FORWARD.format(x), "answer": join_names(ys)} for x, ys in sons.items()]
    items += [{"question": REVERSE.format(y), "answer": xs[0]} for y, xs in fathers.items()
              if len(xs) == 1]
    return [it for it in items if it["question"] not in held_out]


@check
def check_both_ways(both_ways):
    """``both_ways(facts, held_out) -> list of {"question", "answer"}``: chat training items
    from genealogy facts ``(father, son)`` so that a model can answer "Whom did X beget?" and
    "Who was the father of Y?", with no question of ``held_out``."""
    want = {it["question"]: it["answer"] for it in both_ways_reference(_FACTS, _HELD_OUT)}
    got = student_call(both_ways, list(_FACTS), set(_HELD_OUT))
    what = "both_ways(facts, held_out)"
    if got is None:
        raise AssertionError(f"{what}: your function returned None — did you forget `return`?")
    if not isinstance(got, (list, tuple)) or not all(
            isinstance(it, dict) and isinstance(it.get("question"), str)
            and isinstance(it.get("answer"), str) for it in got):
        raise AssertionError(f"{what}: return a list of dicts with str 'question' and 'answer'")
    qs = [it["question"] for it in got]
    answers: dict[str, set] = {}
    for it in got:
        answers.setdefault(it["question"], set()).add(it["answer"])
    leaked = sorted(set(qs) & _HELD_OUT)
    if leaked:
        raise AssertionError(f"{what}: {leaked[0]!r} is a held-out question: training on it makes "
                             f"the evaluation measure memory, not what the model inferred")
    two = sorted(q for q, a in answers.items() if len(a) > 1)
    if two:
        raise AssertionError(f"{what}: {two[0]!r} appears with answers {sorted(answers[two[0]])}: "
                             f"the same question with different answers teaches the model that "
                             f"either is wrong half the time; put all the sons in one answer")
    if not any(q.startswith("Who was the father of") for q in qs):
        raise AssertionError(f"{what}: no 'Who was the father of Y?' items. A model trained on "
                             f"'X begat Y' (and 'Whom did X beget?') does not learn to answer the "
                             f"reverse: the reversal curse (Berglund et al. 2023, "
                             f"arXiv:2309.12288); the reverse direction must be in the data")
    if not any(q.startswith("Whom did") for q in qs):
        raise AssertionError(f"{what}: no 'Whom did X beget?' items: train the forward direction "
                             f"as well as the reverse")
    if len(qs) != len(set(qs)):
        dup = next(q for q in qs if qs.count(q) > 1)
        raise AssertionError(f"{what}: {dup!r} appears {qs.count(dup)} times: the genealogies "
                             f"repeat themselves, keep one item per question")
    if REVERSE.format("Ethan") in answers:
        raise AssertionError(f"{what}: 'Who was the father of Ethan?' has no single answer: the "
                             f"text names two men called Ethan, sons of Zerah and of Kishi. Leave "
                             f"out a son with more than one father (or the model learns a coin flip)")
    for q, a in want.items():
        if q not in answers:
            raise AssertionError(f"{what}: the item {q!r} is missing (expected answer {a!r})")
        g = next(iter(answers[q]))
        if g != a:
            names = [n.strip() for n in g.replace(" and ", ", ").split(",") if n.strip()]
            if len(names) != len(set(names)):
                raise AssertionError(f"{what}: {q!r} -> {g!r} names a son twice: the fact is "
                                     f"repeated in the text, the son is one person")
            if sorted(names) == sorted(a.replace(" and ", ", ").split(", ")):
                raise AssertionError(f"{what}: {q!r} -> {g!r}; expected {a!r}: the sons in the "
                                     f"order the text first names them, written 'A, B and C'")
            raise AssertionError(f"{what}: {q!r} -> {g!r}; expected {a!r}")
    extra = sorted(set(answers) - set(want))
    if extra:
        raise AssertionError(f"{what}: unexpected item {extra[0]!r}: every question must be "
                             f"'Whom did X beget?' or 'Who was the father of Y?' about a fact "
                             f"given")
