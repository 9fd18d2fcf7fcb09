"""LoRA adapters on the engine: a float low-rank path beside each adapted ternary projection.

An adapted projection computes, as PEFT's ``lora.Linear`` (and :class:`bitnet_edu.train.lora.
LoraLinear`) does::

    y = BitLinear(xn) + (xn @ A.T) @ (B * scaling).T          A [r, in], B [out, r], float32

where ``xn`` is the float RMSNorm output that feeds the projection: ``input_layernorm`` for
q/k/v, ``attn_sub_norm`` for o, ``post_attention_layernorm`` for gate/up and ``ffn_sub_norm``
for down.  The ternary weights are untouched: the adapter is a few MB of float32 read once
per token next to them (``python -m bitnet_edu.bench decode --adapter 8`` measures the cost).

Projections that share an input share one matmul: the A matrices of q, k, v (and of gate, up)
are stacked, ``u = xn @ A_stack.T``, and each projection's output columns read their own slice
of ``u``.  :func:`lora_delta` does that per row in Numba, so a row's delta has the same bits
whatever the other rows of the call are (batched decoding stays bit for bit per row).

Adapters come from PEFT directories (:func:`bitnet_edu.formats.peft.read_peft_adapter`) or by
name from the ones shipped in ``bitnet_edu/adapters/<name>/``.  Use
``load_model(adapter=...)``, ``model.load_adapter(...)`` and ``model.remove_adapter()``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit, prange

from ..formats.peft import PROJECTIONS, PeftAdapter, check_layers, module_key, read_peft_adapter
from ..kernels.intrinsics import serial_twin

__all__ = ["Adapter", "LayerLora", "LoraGroup", "ADAPTERS_DIR", "shipped_adapters",
           "resolve_adapter", "load_adapter", "check_adapter", "random_adapter", "lora_delta"]

#: where the adapters shipped with the package live, one directory per name
ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "adapters"

# the packed matrices of a layer (LayerWeights fields) and the projections in each, in order
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
          "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}

_FAST = {"reassoc", "contract", "arcp"}
_SERIAL = itertools.count(1)  # Adapter.serial: never reused (id() is, after GC)


@njit(cache=True, parallel=True, fastmath=_FAST)
def lora_delta(x, a, b, off, rk):
    """The low-rank outputs of one group: ``x`` float32 ``[T, in]`` (the normalized input),
    ``a`` float32 ``[R, in]`` (the stacked A matrices), ``b`` float32 ``[out, rmax]`` (each
    output column's row of ``B * scaling``, zero-padded), ``off``/``rk`` int64 ``[out]``: output
    column ``o`` is ``sum_j b[o, j] * u[off[o] + j]`` over ``j < rk[o]`` with ``u = a @ x[t]``
    (``rk[o] = 0``: a projection of the group that is not adapted).  Returns ``[T, out]``.
    Rows are independent (prange over rows, the same loops for each)."""
    t, n = x.shape
    big_r = a.shape[0]
    m = b.shape[0]
    out = np.empty((t, m), np.float32)
    for r in prange(t):
        u = np.empty(big_r, np.float32)
        for j in range(big_r):
            s = np.float32(0.0)
            for i in range(n):
                s += a[j, i] * x[r, i]
            u[j] = s
        for o in range(m):
            s = np.float32(0.0)
            base = off[o]
            for j in range(rk[o]):
                s += b[o, j] * u[base + j]
            out[r, o] = s
    return out


lora_delta_1 = serial_twin(lora_delta, fastmath=_FAST)  # one token: no parallel region


@dataclass
class LoraGroup:
    """The adapted projections of one packed matrix (``qkv``, ``o``, ``gate_up`` or ``down``).

    ``a`` float32 ``[R, in]``: the A matrices of the adapted projections stacked; ``b`` float32
    ``[out, rmax]``, ``off`` / ``rk`` int64 ``[out]``: see :func:`lora_delta` (``out``: every
    output column of the packed matrix); ``parts``: ``(proj, col_lo, col_hi, A, B * scaling)``
    per adapted projection (the reference path's plain matmuls).
    """

    a: np.ndarray
    b: np.ndarray
    off: np.ndarray
    rk: np.ndarray
    parts: list

    def delta(self, xn: np.ndarray) -> np.ndarray:
        """float32 ``[T, out]``: the low-rank term of every output column (Numba, per row)."""
        fn = lora_delta_1 if len(xn) == 1 else lora_delta
        return fn(np.ascontiguousarray(xn, np.float32), self.a, self.b, self.off, self.rk)

    def delta_reference(self, xn: np.ndarray) -> np.ndarray:
        """The same in plain NumPy: ``(xn @ A.T) @ (B * scaling).T`` per projection."""
        out = np.zeros((len(xn), self.b.shape[0]), np.float32)
        for _, lo, hi, a, bs in self.parts:
            out[:, lo:hi] = (xn @ a.T) @ bs.T
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + bs.nbytes for _, _, _, a, bs in self.parts)


@dataclass
class LayerLora:
    """One layer's adapter: a :class:`LoraGroup` or None for each packed matrix."""

    qkv: LoraGroup | None = None
    o: LoraGroup | None = None
    gate_up: LoraGroup | None = None
    down: LoraGroup | None = None


class Adapter:
    """A LoRA adapter prepared for one model's shape.

    ``name`` (the directory's name), ``path``, ``config`` (``adapter_config.json``),
    ``layers``: a :class:`LayerLora` or None per layer, ``modules``: ``{(layer, proj): (A, B,
    scaling)}`` as read; ``nbytes``: bytes of the float32 A and B matrices (read once per
    token); ``n_params``; ``serial``: a number no other Adapter of this process has.
    """

    def __init__(self, peft: PeftAdapter, model_config):
        check_layers(peft, model_config.num_hidden_layers)
        check_adapter(peft, model_config)
        self.name, self.path, self.config = peft.name, peft.path, peft.config
        self.serial = next(_SERIAL)  # tells adapters apart (the server's response cache)
        self.modules = peft.modules
        self.layers = [_layer(peft.modules, i, model_config)
                       for i in range(model_config.num_hidden_layers)]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b, _ in self.modules.values())

    @property
    def n_params(self) -> int:
        return sum(a.size + b.size for a, b, _ in self.modules.values())

    def __repr__(self) -> str:
        ranks = sorted({a.shape[0] for a, _, _ in self.modules.values()})
        projs = sorted({p for _, p in self.modules}, key=list(PROJECTIONS).index)
        return (f"Adapter({self.name!r}, r={'/'.join(map(str, ranks))}, {len(self.modules)} "
                f"projections ({', '.join(projs)}), {self.nbytes / 2**20:.2f} MiB float32)")


def projection_shapes(c) -> dict:
    """``{proj: (out, in)}`` of a model config's seven projections."""
    hq, hkv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    h, f = c.hidden_size, c.intermediate_size
    return {"q_proj": (hq, h), "k_proj": (hkv, h), "v_proj": (hkv, h), "o_proj": (h, hq),
            "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}


def check_adapter(peft: PeftAdapter, c) -> None:
    """ValueError (naming the file) unless every A is ``[r, in]`` and every B ``[out, r]`` for
    the model config ``c``'s projections, and every layer index is below its layer count."""
    shapes = projection_shapes(c)
    f = peft.path / "adapter_model.safetensors"
    check_layers(peft, c.num_hidden_layers)
    for (layer, proj), (a, b, _) in peft.modules.items():
        out, inp = shapes[proj]
        if a.shape[1] != inp or b.shape[0] != out:
            raise ValueError(f"{f}: {module_key(layer, proj)}: lora_A {list(a.shape)} and "
                             f"lora_B {list(b.shape)} do not fit the model's {proj} [{out}, "
                             f"{inp}] (need A [r, {inp}] and B [{out}, r]): an adapter for "
                             "another model?")


def _layer(modules: dict, i: int, c) -> LayerLora | None:
    shapes = projection_shapes(c)
    groups = {}
    for g, projs in GROUPS.items():
        have = [p for p in projs if (i, p) in modules]
        if not have:
            continue
        outs = [shapes[p][0] for p in projs]
        total = sum(outs)
        rmax = max(modules[(i, p)][0].shape[0] for p in have)
        b = np.zeros((total, rmax), np.float32)
        off, rk = np.zeros(total, np.int64), np.zeros(total, np.int64)
        a_rows, parts, ra = [], [], 0
        for p, out in zip(projs, outs):
            lo = sum(outs[:projs.index(p)])
            if p not in have:
                continue
            a, bb, s = modules[(i, p)]
            r = a.shape[0]
            bs = (bb * np.float32(s)).astype(np.float32)
            b[lo:lo + out, :r] = bs
            off[lo:lo + out], rk[lo:lo + out] = ra, r
            a_rows.append(a)
            parts.append((p, lo, lo + out, a, bs))
            ra += r
        groups[g] = LoraGroup(np.ascontiguousarray(np.concatenate(a_rows), np.float32), b, off,
                              rk, parts)
    return LayerLora(**groups) if groups else None


def shipped_adapters() -> list[str]:
    """Names of the adapters shipped in ``bitnet_edu/adapters/`` (directories with an
    ``adapter_config.json``), sorted."""
    if not ADAPTERS_DIR.is_dir():
        return []
    return sorted(p.name for p in ADAPTERS_DIR.iterdir()
                  if p.is_dir() and (p / "adapter_config.json").is_file())


def resolve_adapter(adapter) -> Path:
    """An adapter directory from a path or a shipped adapter's name.  An existing directory
    wins; otherwise a bare name (no path separator) is looked up in ``bitnet_edu/adapters/``;
    ValueError listing the shipped names when neither exists."""
    p = Path(os.path.expanduser(str(adapter)))
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{p}: not a directory (a PEFT adapter is a directory with "
                         "adapter_config.json and adapter_model.safetensors)")
    text = str(adapter)
    shipped = shipped_adapters()
    if "/" not in text and os.sep not in text and not text.startswith((".", "~")):
        if text in shipped:
            return ADAPTERS_DIR / text
        raise ValueError(f"no adapter named {text!r}: shipped adapters are "
                         f"{shipped or 'none'} (bitnet_edu/adapters/), or give a directory "
                         "with adapter_config.json and adapter_model.safetensors")
    raise ValueError(f"{adapter}: no such adapter directory (shipped adapters, by name: "
                     f"{shipped or 'none'})")


def load_adapter(adapter, model_config) -> Adapter:
    """Read an adapter (a directory, a shipped name, a :class:`PeftAdapter` or an
    :class:`Adapter`) and check it against ``model_config``."""
    if isinstance(adapter, Adapter):
        return Adapter(PeftAdapter(adapter.path, adapter.config, adapter.modules, adapter.name),
                       model_config)
    if not isinstance(adapter, PeftAdapter):
        adapter = read_peft_adapter(resolve_adapter(adapter), model_config.num_hidden_layers)
    return Adapter(adapter, model_config)


def random_adapter(model_config, r: int = 8, *, alpha: float | None = None, seed: int = 0,
                   targets=tuple(PROJECTIONS), scale: float = 0.02) -> Adapter:
    """An adapter with random A and B (nonzero) on ``targets`` of every layer, rank ``r``
    (``lora_alpha = alpha or 2 r``): for speed measurements and tests; its outputs mean
    nothing."""
    rng = np.random.default_rng(seed)
    shapes = projection_shapes(model_config)
    alpha = 2 * r if alpha is None else alpha
    mods = {}
    for i in range(model_config.num_hidden_layers):
        for p in targets:
            out, inp = shapes[p]
            a = (rng.standard_normal((r, inp), np.float32) / np.sqrt(inp)).astype(np.float32)
            b = (rng.standard_normal((out, r), np.float32) * scale).astype(np.float32)
            mods[(i, p)] = (a, b, alpha / r)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(targets)}
    return Adapter(PeftAdapter(path=Path(f"<random r={r}>"), config=config, modules=mods,
                               name=f"random-r{r}"), model_config)
