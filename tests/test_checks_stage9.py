"""Lesson 09's checks: right answers pass, stubs are NOT IMPLEMENTED, each classic mistake FAILs
with its own message (the wrong-answer catalogue), a crash or an endless loop is a FAIL."""

import numpy as np
import pytest

from bitnet_edu import checks
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS, _core
from bitnet_edu.quant import absmean_ternary


def _id(x):
    return x


def make_forward(*, scale="right", order="right", drop="right", where="output", only=False):
    def lora_forward(x, base, A, B, alpha, dropout=None):
        d = dropout or _id
        r = A.shape[0]
        s = {"right": alpha / r, "none": 1.0, "inverse": r / alpha, "alpha": alpha,
             "intdiv": alpha // r}[scale]
        h = d(x) if drop in ("right", "both") else x
        if order == "right":
            upd = h @ A.T @ B.T
        else:
            upd = h @ (B @ A)
        upd = upd * s
        if only:
            return upd
        xb = d(x) if drop in ("base", "both") else x
        if where == "input":
            return base(xb + upd)
        if where == "scaled_all":
            return (base(xb) + upd / s) * s
        return base(xb) + upd
    return lora_forward


def forward_torch_style(x, base, A, B, alpha, dropout=None):  # also right: einsum, float64
    h = (dropout or _id)(x).astype(np.float64)
    return base(x) + np.einsum("...i,ri,or->...o", h, A, B) * (alpha / A.shape[0])


def make_count(*, part="both", layers=None, base=False, full=False, hidden=False):
    def lora_trainable(config, r, targets):
        shapes = config.linear_shapes()
        total = 0
        for t in targets:
            o, i = (config.hidden_size,) * 2 if hidden else shapes[t]
            total += o * i if full else r * {"both": i + o, "A": i, "B": o}[part]
        total *= config.num_hidden_layers if layers is None else layers
        return total + (config.param_counts()["total"] if base else 0)
    return lora_trainable


def make_merge(*, off=False, codes=False, unit_grid=False, absmean=False, from_merged=False,
               norms=False, no_scale=False, by_norm=False):
    def merge_effect(q, s, delta):
        w0 = q.astype(np.float64) * s
        d = np.asarray(delta, np.float64)
        m = w0 + d
        if codes:
            on = 1.0
        elif unit_grid:
            on = float(np.isin(m, (-1.0, 0.0, 1.0)).mean())
        else:
            on = float(np.isclose(m, np.clip(np.round(m / s), -1, 1) * s, rtol=0,
                                  atol=1e-6 * s).mean())
        if absmean:
            q1, s1 = absmean_ternary(m.astype(np.float32))
        else:
            q1, s1 = np.clip(np.round(m / s), -1, 1), s
        ref = m if from_merged else w0
        dd = (d * d).sum()
        if norms:
            kept = np.linalg.norm(q1 * s1 - ref) / np.sqrt(dd)
        elif no_scale:
            kept = ((q1 - q) * d).sum() / dd
        else:
            kept = ((q1 * s1 - ref) * d).sum() / (np.sqrt(dd) if by_norm else dd)
        return {"on_grid": 1 - on if off else on, "codes_changed": float((q1 != q).mean()),
                "update_kept": float(kept)}
    return merge_effect


from bitnet_edu.checks import stage9  # noqa: E402


def make_both(*, reverse=True, forward=True, held=True, per_son=False, dedupe=True,
              ambiguous=False, order=True):
    def both_ways(facts, held_out):
        sons, fathers = {}, {}
        for x, y in facts:
            if not dedupe or y not in sons.setdefault(x, []):
                sons.setdefault(x, []).append(y)
            if x not in fathers.setdefault(y, []):
                fathers[y].append(x)
        items = []
        if forward:
            for x, ys in sons.items():
                ys = ys if order else sorted(ys)
                if per_son:
                    items += [{"question": stage9.FORWARD.format(x), "answer": y} for y in ys]
                else:
                    items.append({"question": stage9.FORWARD.format(x), "answer": stage9.join_names(ys)})
        if reverse:
            items += [{"question": stage9.REVERSE.format(y), "answer": xs[0]}
                      for y, xs in fathers.items() if ambiguous or len(xs) == 1]
        return [it for it in items if not held or it["question"] not in held_out]
    return both_ways


CORRECT = [("check_both_ways", make_both()),
           ("check_both_ways", lambda f, h: list(reversed(stage9.both_ways_reference(f, h)))),
("check_lora_forward", make_forward()), ("check_lora_forward", forward_torch_style),
           ("check_lora_trainable", make_count()), ("check_merge_effect", make_merge())]

WRONG = [
    ("check_lora_forward", make_forward(scale="none"), "scaling is missing"),
    ("check_lora_forward", make_forward(scale="inverse"), "r / alpha"),
    ("check_lora_forward", make_forward(scale="alpha"), "lora_alpha alone"),
    ("check_lora_forward", make_forward(scale="intdiv"), "integer division"),
    ("check_lora_forward", make_forward(order="untransposed"), "not transposed"),
    ("check_lora_forward", make_forward(drop="base"), "dropout went on the frozen path:"),
    ("check_lora_forward", make_forward(drop="both"), "frozen path as well"),
    ("check_lora_forward", make_forward(drop="none"), "dropout was not applied"),
    ("check_lora_forward", make_forward(where="input"), "INPUT"),
    ("check_lora_forward", make_forward(where="scaled_all"), "base output too"),
    ("check_lora_forward", make_forward(only=True), "only the LoRA update"),
    ("check_lora_forward", lambda x, base, A, B, alpha, dropout=None: None, "returned None"),
    ("check_lora_trainable", make_count(base=True), "frozen base"),
    ("check_lora_trainable", make_count(part="A"), "but not lora_B"),
    ("check_lora_trainable", make_count(part="B"), "but not lora_A"),
    ("check_lora_trainable", make_count(layers=1), "ONE layer"),
    ("check_lora_trainable", make_count(full=True), "full fine-tune"),
    ("check_lora_trainable", make_count(hidden=True), "GQA"),
    ("check_lora_trainable", lambda c, r, t: "many", "expected an int"),
    ("check_merge_effect", make_merge(off=True), "OFF the grid"),
    ("check_merge_effect", make_merge(codes=True), "by construction"),
    ("check_merge_effect", make_merge(unit_grid=True), "{-1, 0, 1}"),
    ("check_merge_effect", make_merge(absmean=True), "re-derived the scale"),
    ("check_merge_effect", make_merge(from_merged=True), "from the merged weight"),
    ("check_merge_effect", make_merge(norms=True), "ratio of norms"),
    ("check_merge_effect", make_merge(no_scale=True), "scale is missing"),
    ("check_merge_effect", make_merge(by_norm=True), "divided by |D|"),
    ("check_merge_effect", lambda q, s, d: (0.0, 0.0, 0.0), "return a dict"),
    ("check_both_ways", make_both(reverse=False), "reversal curse"),
    ("check_both_ways", make_both(forward=False), "forward direction"),
    ("check_both_ways", make_both(held=False), "held-out question"),
    ("check_both_ways", make_both(per_son=True), "different answers"),
    ("check_both_ways", make_both(dedupe=False), "names a son twice"),
    ("check_both_ways", make_both(ambiguous=True), "two men called Ethan"),
    ("check_both_ways", make_both(order=False), "order the text first names them"),
    ("check_both_ways", lambda f, h: make_both()(f, h) + make_both()(f, h)[:1], "keep one item"),
    ("check_both_ways", lambda f, h: [("q", "a")], "list of dicts"),
]


@pytest.mark.parametrize("name, fn", CORRECT, ids=[n for n, _ in CORRECT])
def test_correct_answers_pass(name, fn):
    res = getattr(checks, name)(fn)
    assert res.status == PASS, res.message


@pytest.mark.parametrize("name", sorted({n for n, _ in CORRECT}))
def test_stubs_are_not_implemented(name):
    def stub(*a, **k):
        raise NotImplementedError()
    assert getattr(checks, name)(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("name, fn, words", WRONG, ids=[w for _, _, w in WRONG])
def test_classic_mistakes_fail_with_their_own_message(name, fn, words):
    res = getattr(checks, name)(fn)
    assert res.status == FAIL and words in res.message, res.message


@pytest.mark.parametrize("name", sorted({n for n, _ in CORRECT}))
def test_a_crash_is_reported_not_raised(name, capsys):
    res = getattr(checks, name)(lambda *a, **k: 1 / 0)
    assert res.status == FAIL and "ZeroDivisionError" in res.message
    assert "Traceback" not in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted({n for n, _ in CORRECT}))
def test_an_endless_loop_times_out(name, monkeypatch):
    def forever(*a, **k):
        while True:
            pass
    monkeypatch.setattr(_core, "TIMEOUT_S", 0.5)
    res = getattr(checks, name)(forever)
    assert res.status == FAIL and "still running" in res.message


def test_inputs_are_copies():
    """A function that overwrites its inputs cannot change the expected answer."""
    def vandal(q, s, delta):
        right = make_merge()(q, s, delta)
        q[:] = 0
        delta[:] = 0
        return right
    assert checks.check_merge_effect(vandal).status == PASS

    def vandal_forward(x, base, A, B, alpha, dropout=None):
        y = make_forward()(x, base, A, B, alpha, dropout)
        A[:] = 0
        B[:] = 0
        x[:] = 0
        return y
    assert checks.check_lora_forward(vandal_forward).status == PASS
