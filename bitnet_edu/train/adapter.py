"""LoRA on a frozen ternary base, saved and loaded in PEFT's on-disk format (the layers;
:mod:`bitnet_edu.train.lora` is the public face, with the experiments and the CLI).

Each targeted projection ``y = BitLinear(x)`` (ternary weights, int8 activations, frozen) gets a
float low-rank side path, as in PEFT's ``lora.Linear``::

    y = BitLinear(x) + lora_B(lora_A(dropout(x))) * (lora_alpha / r)

``lora_A`` ``[r, in]`` starts kaiming-uniform (``a = sqrt(5)``, nn.Linear's default), ``lora_B``
``[out, r]`` starts at zero, so an adapter that has not trained yet changes nothing.  Only A and B
are trainable; the BitLinear latent weight keeps ``requires_grad=False`` and is still ternarized
in every forward, so the base stays exactly the shipped 1.58-bit model.

**Names.**  :class:`~bitnet_edu.train.model.BitNetLM` holds ``embed_tokens``, ``layers.N.self_attn.
{q,k,v,o}_proj``, ``layers.N.mlp.{gate,up,down}_proj`` and ``norm`` — the inner ``model`` of HF's
``BitNetForCausalLM``.  PEFT names a weight ``base_model.model.`` + its path in the model it wraps,
and for an HF causal LM that path starts with ``model.``, so the adapter file holds e.g.
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` (PEFT drops the adapter
name ``default`` on save).  :class:`HFCausalLM` wraps a BitNetLM in that HF layout so that PEFT
itself (``PeftModel.from_pretrained``) can load our adapter onto our torch model; PEFT accepts
BitLinear as a target with no custom-module registration because BitLinear subclasses
``nn.Linear`` (PEFT's ``dispatch_default`` checks ``isinstance(target, nn.Linear)``), and its
``lora.Linear`` calls the wrapped BitLinear's own forward, so the base stays quantized there too.

**Merging.**  ``W + B @ A * scale`` is a float matrix: the ternary structure is gone.
:func:`merge_lora` computes it, :func:`merge_report` measures how far it is from ternary and what
absmean re-quantization (:func:`~bitnet_edu.quant.absmean_ternary`) keeps of the update, and
:func:`merged_model` builds the re-quantized BitNetLM (method (c) of ``python -m
bitnet_edu.train.lora compare``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..bitlinear import BitLinear
from ..quant import absmean_ternary

__all__ = ["LoraConfig", "LoraLinear", "HFCausalLM", "PEFT_TARGETS", "add_lora", "lora_layers",
           "trainable_parameters", "adapter_state_dict", "save_adapter", "load_adapter",
           "merge_lora", "requantize", "merged_model", "merge_report", "peft_config_dict"]

#: The seven projections of a 2B4T layer, named as in HF (and so as PEFT's target_modules).
PEFT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the wrapped HF model
HF_PREFIX = "model."               # BitNetForCausalLM -> its inner model (our BitNetLM)
PEFT_FORMAT_VERSION = "0.21.0"     # the PEFT release whose adapter_config.json fields we write


@dataclass
class LoraConfig:
    """What PEFT's ``LoraConfig`` calls the same (the subset this module implements).

    ``r`` rank; ``lora_alpha`` with ``scaling = lora_alpha / r``; ``lora_dropout`` on the LoRA
    input only; ``target_modules``: module-name suffixes (PEFT matches a name equal to, or ending
    in ``"." +``, one of them); ``base_model_name_or_path`` goes into ``adapter_config.json``.
    """

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: tuple = PEFT_TARGETS
    base_model_name_or_path: str | None = None
    layers_to_transform: tuple | None = None  # None = every layer
    extra: dict = field(default_factory=dict)  # other adapter_config.json fields, kept on load

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


class LoraLinear(nn.Module):
    """A frozen :class:`BitLinear` (``base_layer``) plus ``lora_B(lora_A(dropout(x))) * scaling``.

    Input ``[..., in]`` float32, output ``[..., out]`` float32.  Attribute names are PEFT's
    (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``), so a state dict's keys line up
    with PEFT's after its adapter name is dropped.
    """

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        for p in base.parameters():
            p.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=dev, dtype=dt)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.r, self.lora_alpha = r, lora_alpha
        self.scaling = lora_alpha / r
        self.reset_lora_parameters()

    def reset_lora_parameters(self):
        """PEFT's ``init_lora_weights=True``: A kaiming-uniform(a=sqrt 5), B zeros."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta_weight(self) -> torch.Tensor:
        """``B @ A * scaling``, float ``[out, in]`` (what merging adds to the weight)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x):
        y = self.base_layer(x)
        x = x.to(self.lora_A.weight.dtype)
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:g}"


class HFCausalLM(nn.Module):
    """A :class:`BitNetLM` in HF's ``BitNetForCausalLM`` module layout: ``self.model`` is the
    BitNetLM, so module paths are ``model.layers.N....`` as in the HF checkpoint.  For PEFT:
    ``PeftModel.from_pretrained(HFCausalLM(lm), adapter_dir)``.

    ``forward(input_ids [B, T] int64, labels=None, **ignored)`` -> logits ``[B, T, vocab]``
    float32 (or ``(logits, loss)`` with labels); PEFT's extra keyword arguments (attention_mask,
    ...) are ignored: the model is causal and unpadded.
    """

    def __init__(self, lm):
        super().__init__()
        self.model = lm
        self.config = _HFConfig(lm.cfg)

    def forward(self, input_ids=None, labels=None, **kwargs):
        return self.model(input_ids, labels)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):  # PEFT's CausalLM wrapper asks
        return {"input_ids": input_ids}


class _HFConfig(dict):
    """Enough of a transformers config for PEFT: attribute and item access, ``to_dict``."""

    def __init__(self, cfg):
        super().__init__(cfg.to_dict())
        self.setdefault("model_type", "bitnet")

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def to_dict(self):
        return dict(self)

    @classmethod
    def from_pretrained(cls, path):
        """``config.json`` of an HF directory (PEFT reads its vocab_size on save)."""
        obj = dict.__new__(cls)
        dict.__init__(obj, json.loads((Path(path) / "config.json").read_text()))
        return obj


def _lm(model):
    """The BitNetLM inside ``model`` (itself, or an :class:`HFCausalLM`'s ``model``)."""
    return model.model if isinstance(model, HFCausalLM) else model


def _targeted(name: str, cfg: LoraConfig) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if leaf not in cfg.target_modules and not any(name.endswith("." + t) or name == t
                                                  for t in cfg.target_modules):
        return False
    if cfg.layers_to_transform is not None:
        parts = name.split(".")
        if "layers" in parts:
            return int(parts[parts.index("layers") + 1]) in cfg.layers_to_transform
    return True


def add_lora(model, cfg: LoraConfig | None = None):
    """Wrap every targeted BitLinear of ``model`` (a BitNetLM or HFCausalLM) in a
    :class:`LoraLinear`, in place; freeze every other parameter.  Returns ``model``.

    Raises if nothing matched (a misspelt target would otherwise train nothing).
    """
    cfg = cfg or LoraConfig()
    lm = _lm(model)
    if lora_layers(lm):
        raise ValueError("model already has LoRA layers")
    for p in lm.parameters():
        p.requires_grad_(False)
    hit = []
    for name, mod in list(lm.named_modules()):
        if isinstance(mod, BitLinear) and _targeted(name, cfg):
            parent_name, _, leaf = name.rpartition(".")
            parent = lm.get_submodule(parent_name) if parent_name else lm
            setattr(parent, leaf, LoraLinear(mod, cfg.r, cfg.lora_alpha, cfg.lora_dropout))
            hit.append(name)
    if not hit:
        raise ValueError(f"no BitLinear matched target_modules={list(cfg.target_modules)}")
    lm.lora_config = cfg
    return model


def lora_layers(model) -> list[tuple[str, LoraLinear]]:
    """``(name, LoraLinear)`` pairs of ``model``, names relative to the BitNetLM."""
    return [(n, m) for n, m in _lm(model).named_modules() if isinstance(m, LoraLinear)]


def trainable_parameters(model) -> dict:
    """``{"trainable", "total", "fraction"}``: parameter counts (the tied embedding once)."""
    ps = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in ps)
    train = sum(p.numel() for p in ps if p.requires_grad)
    return {"trainable": train, "total": total, "fraction": train / total if total else 0.0}


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's saved names, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> float32 ``[r, in]``."""
    out = {}
    for name, m in lora_layers(model):
        for part in ("lora_A", "lora_B"):
            w = getattr(m, part).weight.detach().contiguous().clone()
            out[f"{PEFT_PREFIX}{HF_PREFIX}{name}.{part}.weight"] = w
    return out


def peft_config_dict(cfg: LoraConfig) -> dict:
    """``adapter_config.json`` as PEFT 0.21 writes it for a plain LoRA (every field, sorted)."""
    d = {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
        "auto_mapping": None, "base_model_name_or_path": cfg.base_model_name_or_path,
        "bias": "none", "corda_config": None, "ensure_weight_tying": False, "eva_config": None,
        "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "kasa_config": None, "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": (None if cfg.layers_to_transform is None
                                else sorted(cfg.layers_to_transform)),
        "loftq_config": {}, "lora_alpha": cfg.lora_alpha, "lora_bias": False,
        "lora_dropout": cfg.lora_dropout, "lora_ga_config": None, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "monteclora_config": None,
        "peft_type": "LORA", "peft_version": PEFT_FORMAT_VERSION, "qalora_group_size": 16,
        "r": cfg.r, "rank_pattern": {}, "revision": None,
        "target_modules": sorted(cfg.target_modules), "target_parameters": None,
        "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_bdlora": None,
        "use_dora": False, "use_qalora": False, "use_rslora": False, "velora_config": None,
    }
    d.update(cfg.extra)
    return dict(sorted(d.items()))


_UNSUPPORTED = {"use_dora": False, "use_rslora": False, "bias": "none", "lora_bias": False,
                "fan_in_fan_out": False, "alpha_pattern": {}, "rank_pattern": {},
                "modules_to_save": None, "peft_type": "LORA"}


def _config_from_json(d: dict) -> LoraConfig:
    for k, ok in _UNSUPPORTED.items():
        if d.get(k, ok) not in (ok, None) and not (ok == {} and not d.get(k)):
            raise ValueError(f"adapter_config.json: {k}={d[k]!r} is not supported "
                             f"(only plain LoRA: {k}={ok!r})")
    known = {"r", "lora_alpha", "lora_dropout", "target_modules", "base_model_name_or_path",
             "layers_to_transform"}
    tm = d["target_modules"]
    if isinstance(tm, str):  # PEFT allows a regex string; we take plain names only
        raise ValueError(f"adapter_config.json: target_modules as a regex ({tm!r}) is not "
                         "supported; give a list of module names")
    return LoraConfig(r=int(d["r"]), lora_alpha=d["lora_alpha"],
                      lora_dropout=float(d.get("lora_dropout", 0.0)), target_modules=tuple(tm),
                      base_model_name_or_path=d.get("base_model_name_or_path"),
                      layers_to_transform=(None if d.get("layers_to_transform") is None
                                           else tuple(d["layers_to_transform"])),
                      extra={k: v for k, v in d.items() if k not in known})


def save_adapter(model, out_dir, base_model_name_or_path: str | None = None) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's names, float32,
    metadata ``{"format": "pt"}``) + a short ``README.md`` to ``out_dir``.  Returns the path."""
    from safetensors.torch import save_file

    lm = _lm(model)
    cfg = getattr(lm, "lora_config", None)
    if cfg is None or not lora_layers(lm):
        raise ValueError("model has no LoRA layers: add_lora(model, cfg) first")
    if base_model_name_or_path is not None:
        cfg = replace(cfg, base_model_name_or_path=base_model_name_or_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(peft_config_dict(cfg), indent=2) + "\n")
    save_file(adapter_state_dict(lm), str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (out / "README.md").write_text(
        "---\nlibrary_name: peft\n---\n\n# LoRA adapter (bitnet_edu)\n\n"
        f"A LoRA adapter (r={cfg.r}, lora_alpha={cfg.lora_alpha}, targets "
        f"{', '.join(sorted(cfg.target_modules))}) for a BitNet b1.58 model"
        f"{' (' + cfg.base_model_name_or_path + ')' if cfg.base_model_name_or_path else ''}, "
        "written by bitnet_edu.train.lora in PEFT's format.\n")
    return out


def load_adapter(model, adapter_dir, strict: bool = True):
    """Load a PEFT LoRA adapter directory onto ``model`` (a BitNetLM or HFCausalLM, with or
    without LoRA layers yet: without, :func:`add_lora` is called with the directory's config).
    ``strict``: every LoRA layer gets a tensor and every tensor a layer.  Returns ``model``."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg = _config_from_json(json.loads((d / "adapter_config.json").read_text()))
    lm = _lm(model)
    if not lora_layers(lm):
        add_lora(lm, cfg)
    sd = load_file(str(d / "adapter_model.safetensors"))
    have = {}
    for name, m in lora_layers(lm):
        for part in ("lora_A", "lora_B"):
            have[f"{PEFT_PREFIX}{HF_PREFIX}{name}.{part}.weight"] = getattr(m, part).weight
    if strict:
        missing, extra = sorted(set(have) - set(sd)), sorted(set(sd) - set(have))
        if missing or extra:
            raise ValueError(f"{d}: adapter does not fit the model (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
    with torch.no_grad():
        for k, p in have.items():
            if k in sd:
                if tuple(sd[k].shape) != tuple(p.shape):
                    raise ValueError(f"{d}: {k} has shape {tuple(sd[k].shape)}, the model "
                                     f"{tuple(p.shape)}")
                p.copy_(sd[k])
    return model


# --- merging ------------------------------------------------------------------------------------

def _base_weight(layer: BitLinear, into: str) -> torch.Tensor:
    w = layer.weight.detach().float()
    if into == "latent":
        return w
    if into == "ternary":  # what the frozen forward multiplies by: q * s
        q, s = absmean_ternary(w.numpy(), layer.eps)
        return torch.from_numpy(q.astype(np.float32) * np.float32(s))
    raise ValueError(f"into must be 'latent' or 'ternary', got {into!r}")


@torch.no_grad()
def merge_lora(model, into: str = "latent") -> dict[str, torch.Tensor]:
    """Merged float weights ``W + B @ A * scaling`` per LoRA layer: name -> float32 ``[out, in]``.

    ``into="latent"``: ``W`` is the BitLinear's latent float weight (PEFT's merge);
    ``"ternary"``: ``W`` is its ternary value ``q * s`` (the matrix the frozen forward uses, so
    the merged weight is the adapted layer's linear map, up to the int8 activation rounding
    that the LoRA path does not have).
    """
    return {n: _base_weight(m.base_layer, into) + m.delta_weight().float()
            for n, m in lora_layers(model)}


def requantize(merged: torch.Tensor, layer: BitLinear, into: str):
    """Ternary ``(q' int8 [out, in], s')`` of a merged weight.

    ``into="latent"``: absmean of the merged latent, as BitLinear's forward (and export) does.
    ``into="ternary"``: round to the *base* grid, ``q' = clip(round(M / s), -1, 1)``, ``s' = s``.
    (Absmean of a matrix already on a ternary grid is not idempotent: ``mean|q*s| =
    s * (1 - zeros)``, so re-deriving the scale would shrink the layer by the zero fraction
    even with no update at all; keeping ``s`` isolates what the update does.)
    """
    m = merged.detach().float().numpy()
    if into == "latent":
        return absmean_ternary(m, layer.eps)
    _, s = layer.ternary()
    return np.clip(np.round(m / s), -1, 1).astype(np.int8), float(s)


@torch.no_grad()
def merged_model(model, into: str = "latent"):
    """A plain BitNetLM (no LoRA layers): each LoRA layer's weight merged (:func:`merge_lora`)
    and re-quantized (:func:`requantize`) — the ternary model that shipping the adapter merged
    would give.  ``into="latent"``: the BitLinear latent weights *are* the merged weights (its
    forward and :func:`~bitnet_edu.train.export_hf.export_hf` apply absmean); ``"ternary"``: the
    latent reproduces ``(q', s)`` exactly (:func:`~bitnet_edu.train.import_hf.latent_from_ternary`).
    ``model`` is left unchanged.
    """
    from .import_hf import latent_from_ternary

    lm = copy.deepcopy(_lm(model))
    merged = merge_lora(lm, into)
    for name, m in lora_layers(lm):
        parent_name, _, leaf = name.rpartition(".")
        parent = lm.get_submodule(parent_name) if parent_name else lm
        base = m.base_layer
        if into == "latent":
            base.weight.copy_(merged[name].to(base.weight.dtype))
        else:
            base.weight.copy_(latent_from_ternary(*requantize(merged[name], base, into)))
        setattr(parent, leaf, base)
    if hasattr(lm, "lora_config"):
        del lm.lora_config
    for p in lm.parameters():
        p.requires_grad_(True)
    return lm


@torch.no_grad()
def merge_report(model, into: str = "latent") -> dict:
    """How far merged weights are from ternary, and what re-quantizing them keeps of the update.

    Per layer (``layers``) and overall (weighted by entries), with ``W0 = q*s`` the base's
    ternary value, ``D = B @ A * scaling``, ``M`` the merged weight (``into`` as in
    :func:`merge_lora`) and ``Q = q'*s'`` its re-quantization (:func:`requantize`):

    * ``not_ternary``: fraction of entries of ``W0 + D`` (the adapted layer's weight) that are
      not in ``{-1, 0, 1} * s`` (relative tolerance 1e-6): where the merge left the grid;
    * ``codes_changed``: fraction of ``q'`` different from ``q``;
    * ``update_kept``: ``<Q - W0, D> / <D, D>``, the share of the LoRA update the re-quantized
      weight realizes (1 = all, 0 = none, negative = against it);
    * ``requant_error``: ``|Q - (W0 + D)| / |D|`` (Frobenius), the error of the shipped weight
      against the adapted one, relative to the update;
    * ``scale_ratio``: ``s' / s``; ``delta_rel``: ``|D| / |W0|``.
    """
    rows = []
    n_tot = nt = cc = num = den = err2 = 0.0
    for name, m in lora_layers(model):
        base = m.base_layer
        q0, s0 = base.ternary()
        w0 = q0.astype(np.float64) * s0
        d = m.delta_weight().double().numpy()
        q1, s1 = requantize(_base_weight(base, into) + m.delta_weight().float(), base, into)
        qm = q1.astype(np.float64) * s1
        adapted = w0 + d
        grid = np.clip(np.round(adapted / s0), -1, 1) * s0
        off = float(1 - np.isclose(adapted, grid, rtol=1e-6, atol=1e-6 * s0).mean())
        dd = float((d * d).sum())
        kept = float(((qm - w0) * d).sum())
        e2 = float(((qm - adapted) ** 2).sum())
        rows.append({"name": name, "not_ternary": off, "codes_changed": float((q1 != q0).mean()),
                     "update_kept": kept / dd if dd else float("nan"),
                     "requant_error": math.sqrt(e2 / dd) if dd else float("nan"),
                     "scale_ratio": float(s1 / s0),
                     "delta_rel": math.sqrt(dd / float((w0 ** 2).sum()))})
        n = q0.size
        n_tot += n
        nt += off * n
        cc += rows[-1]["codes_changed"] * n
        num, den, err2 = num + kept, den + dd, err2 + e2
    n_tot = max(n_tot, 1)
    return {"into": into, "layers": rows, "not_ternary": nt / n_tot, "codes_changed": cc / n_tot,
            "update_kept": num / den if den else float("nan"),
            "requant_error": math.sqrt(err2 / den) if den else float("nan"),
            "delta_rel": float(np.mean([r["delta_rel"] for r in rows])) if rows else float("nan")}
