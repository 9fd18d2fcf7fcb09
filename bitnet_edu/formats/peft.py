"""PEFT LoRA adapter directories, read in plain NumPy (no torch, never pickle).

A directory written by PEFT's ``save_pretrained`` (or :func:`bitnet_edu.train.lora.save_adapter`)
holds ``adapter_config.json`` and ``adapter_model.safetensors``.  Each adapted projection has two
tensors, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ``[r, in]`` and
``...lora_B.weight`` ``[out, r]``; the projection's output gains ``(x @ A.T) @ B.T * scaling``,
``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``).

:func:`read_peft_adapter` returns a :class:`PeftAdapter`: ``modules[(layer, proj)] = (A, B,
scaling)`` in float32 for the seven BitNet projections (``q_proj`` ... ``down_proj``).  The rules
it follows (and the fields it refuses) are in ``docs/formats.md``.  Every problem with the files
is a ValueError naming the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .safetensors import SafetensorsFile, bf16_to_float32

__all__ = ["PeftAdapter", "read_peft_adapter", "check_layers", "targeted", "rank_alpha",
           "PROJECTIONS", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: the seven projections of a BitNet layer, with the block each lives in (HF's module names)
PROJECTIONS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
               "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

# config fields that change what the adapter computes in ways this engine does not implement:
# each must be absent, null, false or empty
_REFUSED = {
    "use_dora": "DoRA (a learned magnitude per output) is not implemented",
    "lora_bias": "a bias on lora_B is not implemented",
    "modules_to_save": "fully trained copies of base modules (modules_to_save) are not supported",
    "fan_in_fan_out": "fan_in_fan_out (GPT-2 Conv1D weights, stored transposed) does not apply "
                      "to BitNet's linears",
    "layer_replication": "layer_replication is not supported",
    "target_parameters": "target_parameters (LoRA on raw parameters) is not supported",
    "trainable_token_indices": "trainable_token_indices (new embedding rows) is not supported",
    "use_qalora": "QA-LoRA is not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
    "use_bdlora": "BD-LoRA is not supported",
    "arrow_config": "Arrow routing (arrow_config) is not supported",
}
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)"
                  r"\.lora_(A|B)(?:\.(\w+))?\.weight$")
_FLOATS = {"F32": None, "F16": np.float16, "BF16": "bf16"}


@dataclass
class PeftAdapter:
    """A PEFT LoRA adapter read from ``path``.

    ``modules``: ``{(layer, proj): (A float32 [r, in], B float32 [out, r], scaling)}``;
    ``config``: the ``adapter_config.json`` dict as read; ``name``: the directory's name.
    """

    path: Path
    config: dict
    modules: dict = field(default_factory=dict)
    name: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 A and B matrices."""
        return sum(a.nbytes + b.nbytes for a, b, _ in self.modules.values())

    @property
    def n_params(self) -> int:
        return sum(a.size + b.size for a, b, _ in self.modules.values())

    @property
    def ranks(self) -> set:
        return {a.shape[0] for a, _, _ in self.modules.values()}


def _err(path, msg) -> ValueError:
    return ValueError(f"{path}: {msg}")


def _read_config(path: Path) -> dict:
    f = path / CONFIG_FILE
    if not f.is_file():
        raise _err(f, "missing: a PEFT adapter directory needs adapter_config.json")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _err(f, f"not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise _err(f, "must hold a JSON object")
    kind = d.get("peft_type")
    if kind != "LORA":
        raise _err(f, f"peft_type={kind!r}: only LoRA adapters (peft_type 'LORA') can run here")
    for k, why in _REFUSED.items():
        if d.get(k):
            raise _err(f, f"{k}={d[k]!r}: {why}; only plain LoRA adapters run here")
    if d.get("bias", "none") not in ("none", None):
        raise _err(f, f"bias={d['bias']!r}: trained biases are not supported (bias must be "
                      "'none')")
    if d.get("exclude_modules") and not isinstance(d["exclude_modules"], (str, list)):
        raise _err(f, f"exclude_modules must be a string or a list, got {d['exclude_modules']!r}")

    def number(name, v, whole):
        ok = (isinstance(v, int) if whole else isinstance(v, (int, float)))
        if isinstance(v, bool) or not ok or not math.isfinite(v) or v <= 0:
            raise _err(f, f"{name} must be a positive {'whole ' if whole else ''}number, "
                          f"got {v!r}")
    number("r", d.get("r"), True)
    number("lora_alpha", d.get("lora_alpha", 8), False)
    for pat, whole in (("rank_pattern", True), ("alpha_pattern", False)):
        p = d.get(pat) or {}
        if not isinstance(p, dict):
            raise _err(f, f"{pat} must be an object, got {p!r}")
        for k, v in p.items():
            number(f"{pat}[{k!r}]", v, whole)
    tm = d.get("target_modules")
    if isinstance(tm, str):
        try:
            re.compile(tm)
        except re.error as e:
            raise _err(f, f"target_modules {tm!r} is not a valid regular expression ({e})") from None
    elif not (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm)):
        raise _err(f, f"target_modules must be a list of module names or a regex string, "
                      f"got {tm!r}")
    lt = d.get("layers_to_transform")
    if lt is not None and not (isinstance(lt, int) and not isinstance(lt, bool)) and not (
            isinstance(lt, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                         for i in lt)):
        raise _err(f, f"layers_to_transform must be a layer index or a list of them, got {lt!r}")
    return d


def _pattern_key(patterns, key: str):
    """PEFT's ``get_pattern_key``: the first pattern ``p`` with ``key`` matching
    ``(.*\\.)?(p)$``."""
    for p in patterns:
        if re.match(rf"(.*\.)?({p})$", key):
            return p
    return None


def targeted(config: dict, key: str) -> bool:
    """Whether PEFT's ``check_target_module_exists`` adapts the module named ``key`` (e.g.
    ``model.layers.3.self_attn.q_proj``): ``exclude_modules``, then ``target_modules`` (a regex
    string: full match; ``"all-linear"``: every projection; a list: equal to, or ending in
    ``"." +``, one of them), then ``layers_to_transform`` (list targets only, as in PEFT)."""
    ex = config.get("exclude_modules")
    if ex:
        if isinstance(ex, str):
            if re.fullmatch(ex, key):
                return False
        elif key in ex or any(key.endswith("." + e) for e in ex):
            return False
    tm = config["target_modules"]
    if isinstance(tm, str):
        if tm.lower() == "all-linear":  # PEFT expands it to every linear but the output head
            return True
        return re.fullmatch(tm, key) is not None
    if key in tm:
        return True
    if not any(key.endswith("." + t) for t in tm):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    pattern = config.get("layers_pattern")
    if pattern:
        pats = [pattern] if isinstance(pattern, str) else list(pattern)
        m = None
        for p in pats:
            m = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
            if m:
                break
    else:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    if not m:
        return False
    i = int(m.group("idx"))
    return i == layers if isinstance(layers, int) else i in layers


def module_key(layer: int, proj: str) -> str:
    """The module's name in PEFT's matching, as in HF's ``BitNetForCausalLM``."""
    return f"model.layers.{layer}.{PROJECTIONS[proj]}.{proj}"


def rank_alpha(config: dict, key: str) -> tuple[int, float]:
    """``(r, lora_alpha)`` of module ``key``: ``rank_pattern`` / ``alpha_pattern`` override the
    defaults, matched as PEFT does."""
    r, alpha = int(config["r"]), float(config.get("lora_alpha", 8))
    rp, ap = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    k = _pattern_key(rp, key)
    if k is not None:
        r = int(rp[k])
    k = _pattern_key(ap, key)
    if k is not None:
        alpha = float(ap[k])
    return r, alpha


def scaling_of(config: dict, r: int, alpha: float) -> float:
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _read_tensor(st: SafetensorsFile, name: str, f: Path) -> np.ndarray:
    dt = st.dtype(name)
    if dt not in _FLOATS:
        raise _err(f, f"tensor {name!r} has dtype {dt}; LoRA weights must be F32, F16 or BF16")
    try:
        a = st.read(name)
    except OSError as e:
        raise _err(f, f"cannot read tensor {name!r} ({e})") from None
    if dt == "BF16":
        a = bf16_to_float32(a)
    a = np.ascontiguousarray(a, np.float32)
    if a.ndim != 2:
        raise _err(f, f"tensor {name!r} has shape {list(a.shape)}; LoRA weights are matrices")
    if not np.isfinite(a).all():
        raise _err(f, f"tensor {name!r} holds NaN or infinite values")
    return a


def read_peft_adapter(path, n_layers: int | None = None) -> PeftAdapter:
    """Read a PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

    ``n_layers``: the model's layer count, to refuse a tensor for a layer it does not have.
    Checks done here: the config (plain LoRA only), every tensor name (only the seven BitNet
    projections), A and B in pairs, ``A [r, in]`` and ``B [out, r]`` with ``r`` the config's
    rank for that module (``rank_pattern``), every tensor for a module the config targets, and
    every targeted module (below ``n_layers``) present.  Shapes against a model's sizes are
    checked by :func:`bitnet_edu.model.lora.check_adapter`.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise _err(p, "not a directory (a PEFT adapter is a directory with adapter_config.json "
                      "and adapter_model.safetensors)")
    config = _read_config(p)
    f = p / WEIGHTS_FILE
    if not f.is_file():
        if (p / "adapter_model.bin").exists():
            raise _err(p / "adapter_model.bin", "refused: a .bin adapter is a Python pickle, and "
                       "loading a pickle can run arbitrary code; convert it to "
                       "adapter_model.safetensors (e.g. PeftModel.save_pretrained(..., "
                       "safe_serialization=True)) on a machine you trust")
        raise _err(f, "missing: the adapter's weights must be in adapter_model.safetensors")
    try:
        st = SafetensorsFile(f)
    except OSError as e:
        raise _err(f, f"cannot read ({e})") from None
    pairs: dict = {}
    names = set()
    for name in st.header:
        m = _KEY.match(name)
        if not m:
            raise _err(f, f"unexpected tensor {name!r}: an adapter for this engine holds only "
                          "model.layers.N.{self_attn,mlp}.<proj>.lora_{A,B}.weight")
        layer, block, proj, part, aname = m.groups()
        if PROJECTIONS.get(proj) != block:
            raise _err(f, f"unexpected tensor {name!r}: BitNet layers have no {block}.{proj} "
                          f"(projections: {', '.join(PROJECTIONS)})")
        names.add(aname)
        if len(names) > 1:
            raise _err(f, f"tensors of several adapter names {sorted(map(str, names))}: save "
                          "one adapter per directory")
        layer = int(layer)
        key = module_key(layer, proj)
        if not targeted(config, key):
            raise _err(f, f"tensor {name!r}: {CONFIG_FILE}'s target_modules / "
                          "layers_to_transform do not target this module")
        slot = pairs.setdefault((layer, proj), {})
        if part in slot:
            raise _err(f, f"two lora_{part} tensors for {key}")
        slot[part] = name
    modules = {}
    for (layer, proj), slot in sorted(pairs.items()):
        key = module_key(layer, proj)
        if set(slot) != {"A", "B"}:
            have = next(iter(slot))
            raise _err(f, f"{key} has lora_{have} but no lora_{'B' if have == 'A' else 'A'}")
        a, b = _read_tensor(st, slot["A"], f), _read_tensor(st, slot["B"], f)
        r, alpha = rank_alpha(config, key)
        if a.shape[0] != r or b.shape[1] != r:
            raise _err(f, f"{key}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not "
                          f"have the rank r={r} of {CONFIG_FILE} (A is [r, in], B is [out, r])")
        modules[(layer, proj)] = (a, b, scaling_of(config, r, alpha))
    if not modules:
        raise _err(f, "holds no LoRA tensors")
    out = PeftAdapter(path=p, config=config, modules=modules, name=p.name)
    if n_layers is not None:
        check_layers(out, n_layers)
    return out


def check_layers(adapter: PeftAdapter, n_layers: int) -> None:
    """ValueError (naming the weights file) when a tensor is for a layer at or past
    ``n_layers``, or when the config targets a module of the first ``n_layers`` layers that has
    no tensors (a list ``target_modules``; PEFT always saves every module it adapted)."""
    f = adapter.path / WEIGHTS_FILE
    for layer, proj in adapter.modules:
        if layer >= n_layers:
            raise _err(f, f"{module_key(layer, proj)}: layer {layer} out of range (the model "
                          f"has {n_layers} layers)")
    if isinstance(adapter.config.get("target_modules"), list):
        missing = [module_key(i, pr) for i in range(n_layers) for pr in PROJECTIONS
                   if targeted(adapter.config, module_key(i, pr))
                   and (i, pr) not in adapter.modules]
        if missing:
            raise _err(f, f"{CONFIG_FILE} targets {missing[0]} ({len(missing)} modules in all) "
                          "but the file has no tensors for it")
