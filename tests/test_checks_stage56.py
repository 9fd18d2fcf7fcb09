"""The Lesson 05–06 exercise checks: a right answer passes, a stub is NOT IMPLEMENTED, and each
classic mistake FAILs with a message that names it (the wrong-answer catalogue)."""

import math

import numpy as np
import pytest

from bitnet_edu import checks
from bitnet_edu.checks import FAIL, NOT_IMPLEMENTED, PASS

torch = pytest.importorskip("torch")

from bitnet_edu.train.loop import lr_at, weight_decay_at  # noqa: E402


def stub(*args, **kwargs):
    raise NotImplementedError()


# --- the schedule, designed: any schedule with the recipe's properties passes -------------------

def package_schedule(step, tc):
    return lr_at(step, tc), weight_decay_at(step, tc)


def linear_schedule(step, tc):  # another design that has every property
    s1 = int(tc.steps * tc.stage1_frac)
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup, tc.weight_decay
    if step < s1:
        t = (step - tc.warmup) / max(1, s1 - tc.warmup)
        return tc.lr * (1 - 0.4 * t), tc.weight_decay
    t = (step - s1) / max(1, tc.steps - s1 - 1)
    return tc.lr_stage2 + (tc.lr_min - tc.lr_stage2) * t, 0.0


def no_warmup(step, tc):
    lr, wd = package_schedule(step, tc)
    return (tc.lr if step < tc.warmup else lr), wd


def no_drop(step, tc):  # warmup, then one smooth cosine to lr_min: no cooldown step
    if step < tc.warmup:
        return package_schedule(step, tc)
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup - 1)
    return tc.lr_min + 0.5 * (tc.lr - tc.lr_min) * (1 + math.cos(math.pi * t)), weight_decay_at(step, tc)


def ste_detached(w):  # the right value, but the weight is cut out of the graph
    from bitnet_edu.bitlinear import weight_quant
    return weight_quant(w).detach()


def decay_in_stage2(step, tc):
    return lr_at(step, tc), tc.weight_decay * 0.5


def no_weight_decay(step, tc):
    return lr_at(step, tc), 0.0


def stage1_too_low(step, tc):
    s1 = int(tc.steps * tc.stage1_frac)
    lr, wd = package_schedule(step, tc)
    if tc.warmup <= step < s1:
        lr = tc.lr * max(0.1, 1 - (step - tc.warmup) / max(1, s1 - tc.warmup))
        lr = max(lr, tc.lr_stage2 * 1.6)
    return lr, wd


# --- post-training quantization that beats naive rounding --------------------------------------

def lloyd_ptq(w):
    s = float(np.mean(np.abs(w)))
    for _ in range(20):
        q = np.clip(np.rint(w / s), -1, 1)
        s = float(np.sum(w * q) / max(np.sum(q * q), 1))
    return np.clip(np.rint(w / s), -1, 1).astype(np.int8), s


def sweep_ptq(w):
    base = float(np.mean(np.abs(w)))
    best = max(np.arange(0.5, 3.0, 0.05),
               key=lambda m: -np.mean((w - np.clip(np.rint(w / (m * base)), -1, 1) * m * base) ** 2))
    s = best * base
    return np.clip(np.rint(w / s), -1, 1), s


def naive_ptq(w):
    s = float(np.mean(np.abs(w)))
    return np.clip(np.rint(w / s), -1, 1), s


def per_row_ptq(w):
    s = np.mean(np.abs(w), axis=1, keepdims=True) * 1.5
    return np.clip(np.rint(w / s), -1, 1), s


def unclipped_ptq(w):
    s = float(np.mean(np.abs(w))) * 0.5
    return np.rint(w / s), s


def worse_ptq(w):
    s = float(np.max(np.abs(w)))
    return np.clip(np.rint(w / s), -1, 1), s


CORRECT = [("check_schedule_design", package_schedule), ("check_schedule_design", linear_schedule),
           ("check_ternary_ptq", lloyd_ptq), ("check_ternary_ptq", sweep_ptq)]

WRONG = [  # (check, wrong function, words the FAIL message must contain)
    ("check_schedule_design", no_warmup, "no warmup"),
    ("check_schedule_design", no_drop, "abrupt drop"),
    ("check_schedule_design", decay_in_stage2, "still on in stage 2"),
    ("check_schedule_design", no_weight_decay, "must be on"),
    ("check_schedule_design", stage1_too_low, "below half the peak"),
    ("check_ternary_ptq", naive_ptq, "IS the naive rounding"),
    ("check_ternary_ptq", per_row_ptq, "ONE scale"),
    ("check_ternary_ptq", unclipped_ptq, "outside"),
    ("check_ternary_ptq", worse_ptq, "WORSE"),
    ("check_ste_weight", ste_detached, "visible to autograd"),
]


@pytest.mark.parametrize("name, fn", CORRECT, ids=[f"{n}-{f.__name__}" for n, f in CORRECT])
def test_correct_answers_pass(name, fn):
    res = getattr(checks, name)(fn)
    assert res.status == PASS, res.message


@pytest.mark.parametrize("name", sorted({n for n, _ in CORRECT}))
def test_stub_is_not_implemented(name):
    assert getattr(checks, name)(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("name, fn, words", WRONG, ids=[f"{n}-{getattr(f, '__name__', 'lambda')}" for n, f, _ in WRONG])
def test_classic_mistakes_fail_with_their_own_message(name, fn, words):
    res = getattr(checks, name)(fn)
    assert res.status == FAIL
    assert words in res.message, res.message
