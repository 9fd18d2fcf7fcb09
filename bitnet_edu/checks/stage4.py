"""Checks for stage 4 (full inference): RoPE, one attention step with a KV cache, top-p."""

import numpy as np

from ._core import check, expect_close, student_call
from ..generate import top_p_filter
from ..model.layers import apply_rope, attention, rope_tables

# RMSNorm is graded by stage 2's check_rms_norm (same function, same signature).
__all__ = ["check_rope", "check_attention_step", "check_top_p"]


@check
def check_rope(student_fn):
    rng = np.random.default_rng(1)
    for t, h, d, theta in [(1, 1, 4, 10000.0), (5, 3, 16, 10000.0), (7, 2, 128, 500000.0)]:
        x = rng.standard_normal((t, h, d)).astype(np.float32)
        cos, sin = rope_tables(t, d, theta)
        want = apply_rope(x, cos, sin)
        expect_close(student_call(student_fn, x, cos, sin), want,
                     f"rope for T={t}, H={h}, D={d} (rotate HALVES, not pairs)", rtol=1e-4, atol=1e-5)


@check
def check_attention_step(student_fn):
    rng = np.random.default_rng(2)
    for s, h, hkv, d in [(1, 2, 1, 4), (6, 4, 2, 8), (9, 6, 2, 16)]:
        k = rng.standard_normal((s, hkv, d)).astype(np.float32)
        v = rng.standard_normal((s, hkv, d)).astype(np.float32)
        q = rng.standard_normal((1, h, d)).astype(np.float32)
        want = attention(q, k, v, s - 1)[0]
        expect_close(student_call(student_fn, q[0], k, v), want,
                     f"attention of one new token over a cache of {s} (H={h}, Hkv={hkv})", rtol=1e-4, atol=1e-5)


@check
def check_top_p(student_fn):
    cases = [(np.array([0.5, 0.3, 0.15, 0.05]), 0.8), (np.array([0.5, 0.3, 0.15, 0.05]), 0.81),
             (np.array([0.1, 0.6, 0.3]), 0.05), (np.full(4, 0.25), 1.0)]
    for p, top in cases:
        what, want = f"top_p={top} on {p.tolist()}", top_p_filter(p.copy(), top)
        expect_close(student_call(student_fn, p, top), want, what)
