"""HF BitNet checkpoint directories: read into the canonical form, write the packed format.

A directory holds ``config.json``, ``model.safetensors`` (or shards with
``model.safetensors.index.json``) and usually ``tokenizer.json``, ``tokenizer_config.json`` and
``generation_config.json``.  Two weight flavours exist (``docs/formats.md``):

* packed offline (``quantization_mode: offline``): each linear uint8 ``[out/4, in]``, four
  output-row quarters per byte (:func:`bitnet_edu.packing.pack_hf`), plus a bf16 ``[1]``
  ``weight_scale``; everything else bf16.  :func:`write_hf_checkpoint` writes this flavour.
* the bf16 master (``quantization_mode: online`` or no quantization config): float linears,
  ternarized here with absmean as transformers does on the fly.

The block's layout comes from ``config.json`` (:class:`~bitnet_edu.config.BitNetConfig`):
``BitNetForCausalLM`` (2B4T: sub-norms, tied head) or ``LlamaForCausalLM`` (Falcon3 1.58-bit,
HF1BitLLM's Llama3-8B-1.58: no sub-norms, an untied float ``lm_head``).  Two meanings of the
packed file's ``weight_scale`` (``quantization_config.linear_class``, docs/family.md):
``autobitlinear`` (2B4T) multiplies, ``bitlinear`` (the default of ``quant_method: bitnet``:
Falcon3, HF1BitLLM) is the reciprocal 1/absmean.  The reader converts to the canonical
absmean, so nothing after it sees the difference; the writer writes the config's own class.
``modules_to_not_convert`` is honoured as transformers does: listed modules stay float (the
untied head must be one of them; a float projection is refused).

1bitLLM's ``BitnetForCausalLM`` (``model_type: llama``, remote code that is never imported or
run): float16 master linears ternarized here like the bf16 master, the two sub-norms stored as
``self_attn.inner_attn_ln`` and ``mlp.ffn_layernorm`` (read into the canonical
``attn_sub_norm`` / ``ffn_sub_norm``, :func:`~bitnet_edu.formats.schema.file_names`), a tied head
unless the file stores an ``lm_head.weight`` that differs from the embedding.  A projection
bias is refused (in any layout).

Reading streams: :func:`iter_hf_checkpoint` reads one tensor at a time with plain file reads,
so a load never holds the file (or more than one unpacked tensor) next to the model.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from ..config import LINEAR_CLASSES, BitNetConfig, is_master_layout
from ..packing import pack_hf, unpack_hf
from ..quant import absmean_ternary
from ..tokenizer import load_tokenizer
from .safetensors import SafetensorsFile, SafetensorsWriter, bf16_to_float32, float32_to_bf16
from .schema import (RowBlocks, check_zero_linear, expected_tensors, file_names, in_order,
                     is_linear, is_scale)

__all__ = ["iter_hf_checkpoint", "read_hf_checkpoint", "write_hf_checkpoint", "read_tokenizer",
           "read_generation_config", "read_chat_template", "read_generation_prompt",
           "GENERATION_PROMPT_KEY", "QUANT_CONFIG", "QUANT_CONFIG_BITLINEAR"]

#: ``quantization_config`` of a packed checkpoint (the real 2B4T file's)
QUANT_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                "quantization_mode": "offline"}
#: ``quantization_config`` of a packed ``bitlinear`` checkpoint (weight_scale = 1/absmean; the
#: Falcon3 1.58-bit files say only quant_method and modules_to_not_convert: the same meaning)
QUANT_CONFIG_BITLINEAR = {"quant_method": "bitnet", "linear_class": "bitlinear",
                          "modules_to_not_convert": ["lm_head"]}
_FLOATS = ("BF16", "F32", "F16", "F64")


def _json(path: Path, obj: bool = True):
    """The JSON in ``path``; ValueError naming the file when it is not JSON (or, with ``obj``,
    not a JSON object)."""
    try:
        d = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON: {str(e)[:200]}") from None
    if obj and not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got a {type(d).__name__}")
    return d


def read_tokenizer(path):
    """``tokenizers.Tokenizer`` from the directory's ``tokenizer.json``, or None if absent.

    A tokenizer that parses but cannot encode (a post-processor naming a missing token makes
    the Rust library panic, an exception outside ``Exception``) is a ValueError here, at load,
    not at the first prompt."""
    tok = load_tokenizer(path)
    if tok is not None:
        try:
            tok.encode("Hello, world! 123")
            tok.encode("Hello", "world")  # a pair: the post-processor's other template
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # pyo3's PanicException derives from BaseException
            raise ValueError(f"{Path(path) / 'tokenizer.json'}: the tokenizer cannot encode "
                             f"text ({type(e).__name__}: {str(e)[:200]})") from None
    return tok


def read_generation_config(path) -> dict:
    """``generation_config.json`` of the directory as a dict (empty if absent)."""
    g = Path(path) / "generation_config.json"
    return _json(g) if g.exists() else {}


def read_chat_template(path) -> str | None:
    """The directory's jinja chat template, as transformers finds it: ``chat_template.jinja``
    (newer saves) if present, else ``tokenizer_config.json``'s ``chat_template`` (a string, or a
    list of ``{"name", "template"}``: the one named ``default``); None when there is none."""
    j = Path(path) / "chat_template.jinja"
    if j.is_file():
        try:
            return j.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{j}: not UTF-8 text") from None
    t = Path(path) / "tokenizer_config.json"
    template = _json(t).get("chat_template") if t.exists() else None
    if isinstance(template, list):  # named templates (e.g. "default", "tool_use")
        named = {d.get("name"): d.get("template") for d in template if isinstance(d, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


#: bitnet_edu's own ``tokenizer_config.json`` field: the text that opens the assistant's turn
#: in the chat template, when a model's differs from 2B4T's ``"Assistant: "``.
GENERATION_PROMPT_KEY = "bitnet_edu_generation_prompt"


def read_generation_prompt(path) -> str | None:
    """``tokenizer_config.json``'s :data:`GENERATION_PROMPT_KEY` (a string), or None.

    The shipped small model sets ``"Assistant:"``: its byte-level BPE attaches a word's leading
    space to the word (``"ĠZadok"``), so a prompt ending in a space would end on a lone space
    token that pre-training never put before a name; the answer's first token carries the space
    instead."""
    t = Path(path) / "tokenizer_config.json"
    value = _json(t).get(GENERATION_PROMPT_KEY) if t.exists() else None
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{t}: {GENERATION_PROMPT_KEY} must be a non-empty string, got {value!r}")
    return value


def read_add_bos_token(path) -> bool | None:
    """``tokenizer_config.json``'s ``add_bos_token`` (true/false), or None when the file or the
    key is absent.  transformers' tokenizers honour it; the engine does too: False means a
    text prompt gets no bos in front even when the config names one (Falcon3's configs name
    ``<|endoftext|>`` as bos; whether its tokenizer adds it is unverified, docs/family.md)."""
    t = Path(path) / "tokenizer_config.json"
    if not t.exists():
        return None
    value = _json(t).get("add_bos_token")
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{t}: add_bos_token must be true or false, got {value!r}")
    return value


#: sentence-transformers' ``1_Pooling/config.json`` flags -> the engine's pooling names
_POOLING_FLAGS = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean"}
_UNSUPPORTED_POOLING = ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                        "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


def read_pooling(path) -> str | None:
    """The pooling of a sentence-transformers directory: ``modules.json`` names a module whose
    ``type`` ends in ``Pooling``, and that module's ``config.json`` sets one ``pooling_mode_*``
    flag: ``"last"`` (lasttoken) or ``"mean"`` (mean_tokens).  None when the directory has no
    ``modules.json`` or no pooling module; ValueError for another mode (CLS, max, ...), a
    module path outside the directory, or broken JSON."""
    path = Path(path)
    m = path / "modules.json"
    if not m.is_file():
        return None
    mods = _json(m, obj=False)
    if not isinstance(mods, list):
        raise ValueError(f"{m}: expected a list of modules")
    for mod in mods:
        if not isinstance(mod, dict) or not str(mod.get("type", "")).endswith("Pooling"):
            continue
        where = f"{m} ({mod.get('type')})"
        rel = mod.get("path", "")
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"{where}: module path {rel!r} is outside the model directory")
        cfg = path / rel / "config.json"
        if not cfg.is_file():
            raise ValueError(f"{where}: no {cfg}")
        flags = _json(cfg)
        for key, name in _POOLING_FLAGS.items():
            if flags.get(key):
                return name
        other = [k for k in _UNSUPPORTED_POOLING if flags.get(k)]
        raise ValueError(f"{cfg}: pooling {other[0] if other else 'none set'} is not supported "
                         "(last token or mean)")
    return None


def _allowed_roots(path: Path) -> list[Path]:
    """Where a weight file of the directory may really live: inside it, or, for a hub cache
    snapshot (``.../snapshots/<rev>``, whose files are links into the repo's ``blobs``), in
    that ``blobs`` folder."""
    root = path.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    return roots


def _confined(path: Path, name, where: str) -> Path:
    """``path / name`` if ``name`` is a relative path that stays in the model directory (after
    following symlinks), else ValueError.  The file is not opened here, so nothing of a file
    outside can reach an error message."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"{where}: shard name {name!r} is not a file name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or rel.drive:
        raise ValueError(f"{where}: shard {name!r} is outside the model directory (shard names "
                         "must be relative paths inside it)")
    target = (path / rel).resolve()
    if not any(target == r or r in target.parents for r in _allowed_roots(path)):
        raise ValueError(f"{where}: shard {name!r} is a link to a file outside the model "
                         "directory")
    if not target.is_file():
        raise ValueError(f"{where}: shard {name!r} does not exist")
    return path / rel


def _safetensor_files(path: Path) -> tuple[list[Path], dict | None]:
    """The weight files, and the index's ``weight_map`` (tensor -> shard name) or None."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        wm = _json(index).get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise ValueError(f"{index}: weight_map must be an object of tensor name -> shard file")
        bad = [v for v in wm.values() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"{index}: shard name {bad[0]!r} is not a file name")
        return [_confined(path, s, str(index)) for s in sorted(set(wm.values()))], wm
    single = path / "model.safetensors"
    if not single.exists():
        raise ValueError(f"{path}: no model.safetensors (or model.safetensors.index.json) found")
    return [_confined(path, single.name, str(path))], None


def _check_index(path: Path, wm: dict, files: dict) -> None:
    """The index must list every tensor of the shards, each in the shard that holds it."""
    index = path / "model.safetensors.index.json"
    for name, shard in wm.items():
        if name not in files:
            raise ValueError(f"{index}: tensor {name!r} is listed in {shard!r} but no shard "
                             "holds it")
        if Path(shard) != files[name].path.relative_to(path):
            raise ValueError(f"{index}: tensor {name!r} is listed in {shard!r} but is in "
                             f"{str(files[name].path.relative_to(path))!r}")
    unlisted = next((n for n in files if n not in wm), None)
    if unlisted is not None:
        raise ValueError(f"{index}: tensor {unlisted!r} of {files[unlisted].path.name!r} is not "
                         "in its weight_map")


def _quant_mode(config: dict, raw: dict) -> str:
    """``"offline"`` (packed linears and their scales) or ``"online"`` (float master linears,
    quantized here); the linear class and ``modules_to_not_convert`` are checked too."""
    if is_master_layout(config.get("architectures")):
        return "online"  # 1bitLLM: float masters only (a quantization config is refused)
    qc = config.get("quantization_config") or {}
    if not isinstance(qc, dict):
        raise ValueError(f"quantization_config={qc!r}: expected an object")
    if qc:
        if qc.get("quant_method", "bitnet") != "bitnet":
            raise ValueError(f"quantization_config.quant_method={qc.get('quant_method')!r} is "
                             "not 'bitnet'")
        lc = qc.get("linear_class", "bitlinear")
        if lc not in LINEAR_CLASSES:
            raise ValueError(f"linear_class={lc!r}: only 'autobitlinear' (2B4T: weight_scale "
                             "multiplies) and 'bitlinear' (weight_scale is 1/absmean) exist")
        if lc == "bitlinear":
            return "offline"  # transformers ignores quantization_mode for bitlinear
        return qc.get("quantization_mode", "offline")
    return "offline" if any(k.endswith("_scale") for k in raw) else "online"


_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"


def _not_converted(name: str, patterns) -> bool:
    """transformers' ``should_convert_module`` negated: whether module ``name`` stays float
    under ``modules_to_not_convert`` (a pattern matches from the start up to a module
    boundary, as a regex with the same boundary, or as a suffix)."""
    for key in patterns:
        try:
            if re.match(rf"(?:{key}){_BOUNDARY}", name):
                return True
        except re.error as e:
            raise ValueError(f"quantization_config.modules_to_not_convert: {key!r} is not a "
                             f"pattern ({e})") from None
        if name.endswith(key):
            return True
    return False


def _check_not_converted(config: dict, cfg: BitNetConfig, want: dict) -> None:
    """``modules_to_not_convert`` as transformers reads it: None (or absent) = its defaults
    (the output head stays float); a list = exactly those modules.  The engine runs ternary
    projections and a float head only: a list that leaves a projection float, or an untied
    head ternary, is refused."""
    qc = config.get("quantization_config") or {}
    patterns = qc.get("modules_to_not_convert")
    if patterns is None:
        return
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"quantization_config.modules_to_not_convert={patterns!r}: expected a "
                         "list of module names")
    for name in want:
        if is_linear(name) and _not_converted(name[:-len(".weight")], patterns):
            raise ValueError(f"quantization_config.modules_to_not_convert keeps "
                             f"{name[:-len('.weight')]!r} in float: only ternary projections "
                             "are supported")
    if not cfg.tie_word_embeddings and not _not_converted("lm_head", patterns):
        raise ValueError(f"quantization_config.modules_to_not_convert={patterns!r} does not "
                         "list 'lm_head': a ternary output head is not supported (Falcon3's "
                         "files list it)")


def iter_hf_checkpoint(path, *, progress=None, blocks: bool = False):
    """Yield ``(config_dict, None)`` first, then canonical ``(name, array)`` one tensor at a time.

    Names come in the canonical order (:func:`~bitnet_edu.formats.schema.expected_tensors`);
    config, file headers and the presence of every tensor are checked before the first yield.
    ``blocks=True`` hands the 2-D float tensors (embedding, untied ``lm_head``) over as
    :class:`~bitnet_edu.formats.schema.RowBlocks` read from the file a block of rows at a time.
    ``progress``: optional callable ``(n_done, n_total, name)``.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"{path}: no config.json; is this an HF model directory?")
    config = _json(cfg_path)
    try:
        cfg = BitNetConfig.from_dict(config)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    files = {}
    shards, weight_map = _safetensor_files(path)
    for f in shards:
        st = SafetensorsFile(f)  # validates sizes and offsets before any read
        twice = next((n for n in st.header if n in files), None)
        if twice is not None:
            raise ValueError(f"{f}: tensor {twice!r} is also in {files[twice].path.name}")
        files.update({n: st for n in st.header})
    if weight_map is not None:
        _check_index(path, weight_map, files)
    try:
        mode = _quant_mode(config, files)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    _check_layers(cfg_path, cfg.num_hidden_layers, files)  # before listing expected names
    tied_copy = False  # a stored lm_head.weight that is the tied embedding itself
    if cfg.tie_word_embeddings and "lm_head.weight" in files \
            and is_master_layout(config.get("architectures")):
        # 1bitLLM (docs/family.md, 2c): a stored head is the one to use, even under
        # tie_word_embeddings: true; one equal to the embedding stays tied (no second table)
        tied_copy = _same_tensor(files, "lm_head.weight", "model.embed_tokens.weight")
        if not tied_copy:
            warnings.warn(f"{path}: config.json says tie_word_embeddings: true but "
                          "lm_head.weight differs from the embedding: the stored lm_head is "
                          "used as the output head", stacklevel=2)
            config = {**config, "tie_word_embeddings": False}
            cfg = BitNetConfig.from_dict(config)
    want = expected_tensors(cfg)
    disk = file_names(cfg)  # canonical -> the name in the file (1bitLLM's sub-norms differ)
    disk = {n: _on_disk(f, files) for n, f in disk.items()}
    try:
        _check_not_converted(config, cfg, want)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    reciprocal = mode == "offline" and cfg.linear_class == "bitlinear"
    missing = [disk[n] for n in want
               if disk[n] not in files and not (mode == "online" and is_scale(n))]
    if missing and cfg.projection_norms and all(m.endswith("_proj.norm.weight")
                                                for m in missing):
        raise ValueError(f"{path}: missing tensor {missing[0]!r} and every other per-projection "
                         "input norm: a Qwen3 checkpoint without them is a float model, not "
                         "BitNet-embedding (docs/family.md, 2d)")
    if missing:
        raise ValueError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    on_disk = set(disk.values())
    extra = sorted(n for n in files
                   if n not in on_disk and not (tied_copy and n == "lm_head.weight"))
    bias = next((n for n in extra if n.endswith("_proj.bias")), None)
    if bias is not None:  # ignoring it would run another model than the file's
        raise ValueError(f"{files[bias].path}: tensor {bias!r}: projections with a bias are not "
                         "supported (the ternary projections have none)")
    if extra:
        warnings.warn(f"{path}: {len(extra)} tensor(s) not part of a BitNet model are ignored: "
                      f"{', '.join(map(repr, extra[:5]))}{' ...' if len(extra) > 5 else ''}",
                      stacklevel=2)
    yield config, None
    names = [n for n in want if not is_scale(n)]
    for k, name in enumerate(names):
        src = disk[name]  # read under the file's name, yielded under the canonical one
        st = files[src]
        if is_linear(name):
            yield from _linear(name, st, files, mode, want[name], reciprocal, src)
        elif blocks and len(want[name]) == 2:
            _check_float(src, st, want[name])
            yield name, RowBlocks(want[name], lambda a, b, src=src, st=st: _finite(
                st, src, _widen(st.read(src, rows=(a, b)), st.dtype(src))))
        else:
            _check_float(src, st, want[name])
            yield name, _finite(st, src, _widen(st.read(src), st.dtype(src)))
        if progress:
            progress(k + 1, len(names), name)


def _on_disk(name: str, files: dict) -> str:
    """The name tensor ``name`` has in ``files``: itself, or an alias BitNet-embedding's files
    may use (docs/family.md, 2d): without the ``model.`` prefix (bitnet.cpp's converter strips
    one if present), and a projection's input norm as transformers' ``use_rms_norm`` names it
    (``<proj>.rms_norm.weight``).  ``name`` itself when none is there (reported missing)."""
    if name in files:
        return name
    alts = [name[len("model."):]] if name.startswith("model.") else []
    if name.endswith("_proj.norm.weight"):
        rms = name[:-len("norm.weight")] + "rms_norm.weight"
        alts += [rms] + ([rms[len("model."):]] if rms.startswith("model.") else [])
    return next((a for a in alts if a in files), name)


def _same_tensor(files: dict, a: str, b: str, block: int = 4096) -> bool:
    """Whether tensors ``a`` and ``b`` hold the same bytes (dtype, shape and values), compared
    a block of rows at a time (a 1bitLLM-3B embedding is 205 MB)."""
    fa, fb = files[a], files[b]
    if fa.dtype(a) != fb.dtype(b) or fa.shape(a) != fb.shape(b) or len(fa.shape(a)) != 2:
        return False
    n = fa.shape(a)[0]
    return all(np.array_equal(fa.read(a, rows=(r, min(r + block, n))),
                              fb.read(b, rows=(r, min(r + block, n))))
               for r in range(0, n, block))


_LAYER = re.compile(r"(?:model\.)?layers\.(\d+)\.")


def _check_layers(cfg_path: Path, n: int, files: dict) -> None:
    """The files must hold exactly layers ``0 .. n-1``: a config claiming more layers than the
    files have is refused before anything is sized from it, one claiming fewer would silently
    drop the rest."""
    present = {int(m.group(1)) for m in map(_LAYER.match, files) if m}
    top = max(present, default=-1) + 1
    if n > top:
        raise ValueError(f"{cfg_path}: num_hidden_layers={n} but the weight files hold tensors "
                         f"of {top} layer(s)")
    if n < top:
        raise ValueError(f"{cfg_path}: num_hidden_layers={n} but the weight files hold tensors "
                         f"of {top} layers (up to model.layers.{top - 1}.*)")


def _finite(st: SafetensorsFile, name: str, a: np.ndarray) -> np.ndarray:
    """``a`` if every value is finite, else ValueError naming the file and tensor."""
    if not np.isfinite(a).all():
        bad = int(np.size(a) - np.isfinite(a).sum())
        raise ValueError(f"{st.path}: tensor {name!r} has {bad} non-finite value(s) (NaN or inf)")
    return a


def _check_float(name, st: SafetensorsFile, shape) -> None:
    if st.shape(name) != tuple(shape):
        raise ValueError(f"{st.path}: tensor {name!r}: expected shape {tuple(shape)}, got "
                         f"{st.shape(name)}")
    if st.dtype(name) not in _FLOATS:
        raise ValueError(f"{st.path}: tensor {name!r}: expected a float dtype (BF16/F16/F32), got "
                         f"{st.dtype(name)}")


def _widen(a: np.ndarray, dtype: str) -> np.ndarray:
    """Stored float bytes (bf16 as uint16) -> float32."""
    return bf16_to_float32(a) if dtype == "BF16" else np.asarray(a, np.float32)


def _linear(canonical, st: SafetensorsFile, files: dict, mode: str, shape, reciprocal=False,
            name=None):
    """The int8 codes and canonical scale (absmean: it multiplies) of one linear, read under
    its file name ``name`` (default the canonical one), yielded under ``canonical``.
    ``reciprocal``: the file's ``weight_scale`` is bitlinear's 1/absmean, inverted here."""
    name = name or canonical
    out, k = shape
    sname = name + "_scale"
    if mode == "offline":
        dtype = st.dtype(name)
        if dtype not in ("U8", "I8") or st.shape(name) != (out // 4, k):
            raise ValueError(f"{st.path}: tensor {name!r}: a packed offline linear must be uint8 "
                             f"of shape "
                             f"{(out // 4, k)}, got {dtype} {st.shape(name)}")
        try:
            q = unpack_hf(st.read(name).view(np.uint8))
        except ValueError as e:
            raise ValueError(f"{st.path}: tensor {name!r}: {e}") from None
        if sname not in files:
            raise ValueError(f"{st.path}: missing tensor {sname!r} (the scale of {name!r})")
        s = files[sname].read(sname)
        s = _widen(s, files[sname].dtype(sname)).reshape(-1)
        if s.size != 1 or not np.isfinite(s[0]):
            raise ValueError(f"{files[sname].path}: tensor {sname!r}: expected one finite scale, "
                             f"got shape {s.shape} {s[:3]}")
        if reciprocal:
            if s[0] == 0:
                raise ValueError(f"{files[sname].path}: tensor {sname!r} is 0: a bitlinear "
                                 "weight_scale is 1/absmean and divides the output")
            s = np.array([1.0 / np.float64(s[0])], np.float32)
    else:
        _check_float(name, st, shape)
        q, scale = absmean_ternary(_finite(st, name, _widen(st.read(name), st.dtype(name))))
        s = np.array([scale], np.float32)
    check_zero_linear(name, q)
    yield canonical, q
    del q  # before the scale: the consumer may pack and free the weight then
    yield canonical + "_scale", s


def read_hf_checkpoint(path, *, progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a packed or bf16-master HF directory: returns canonical ``(config, weights)``."""
    it = iter_hf_checkpoint(path, progress=progress)
    config, _ = next(it)
    return config, dict(it)


# --- writing ---------------------------------------------------------------------------------

def _specs(want: dict) -> dict:
    """The on-disk dtype and shape of each canonical tensor in the packed format."""
    specs = {}
    for name, shape in want.items():
        if is_linear(name):
            if shape[0] % 4:
                raise ValueError(f"tensor {name!r} of shape {shape}: the HF packed layout needs "
                                 "out_features to be a multiple of 4")
            specs[name] = ("U8", (shape[0] // 4, shape[1]))
        else:
            specs[name] = ("BF16", shape)
    return specs


def _packed(name: str, a, shape, reciprocal: bool = False):
    """One canonical tensor -> its packed-format bytes (an array, or row blocks as a generator).
    ``reciprocal``: a scale is written as bitlinear's 1/absmean."""
    if isinstance(a, RowBlocks):
        if a.shape != tuple(shape):
            raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, got {a.shape}")
        return (float32_to_bf16(x) for _, x in a.blocks())
    a = np.asarray(a)
    if is_scale(name):
        a = a.reshape(-1)
        if reciprocal:
            if a.shape == (1,) and a[0] == 0:
                raise ValueError(f"tensor {name!r}: a zero scale has no bitlinear reciprocal")
            a = (1.0 / a.astype(np.float64)).astype(np.float32)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if is_linear(name):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"tensor {name!r}: expected int8 ternary weights, got {a.dtype}; "
                             "quantize float weights first (bitnet_edu.quant.absmean_ternary)")
        try:
            return pack_hf(a)
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
    return float32_to_bf16(a.astype(np.float32, copy=False))


def _write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=2) + "\n")


def write_hf_checkpoint(out_dir, config, tensors, *, tokenizer=None, tokenizer_config=None,
                        generation_config=None, progress=None) -> Path:
    """Write an HF directory in the packed offline format; returns ``out_dir``.

    Args:
        config: a :class:`~bitnet_edu.config.BitNetConfig` or its ``config.json`` dict; the file
            gets it plus the offline ``quantization_config`` of its ``linear_class``
            (:data:`QUANT_CONFIG`; ``bitlinear``: :data:`QUANT_CONFIG_BITLINEAR`, the scales
            written as 1/absmean) and ``torch_dtype: bfloat16``.  A 1bitLLM config
            (``BitnetForCausalLM``) is written as ``BitNetForCausalLM``, its ``auto_map``
            dropped: the packed file has 2B4T's names.
        tensors: the canonical checkpoint, a dict or a stream of ``(name, array)`` (a
            :class:`~bitnet_edu.formats.schema.RowBlocks` for a large float matrix is fine).
            A stream in the canonical order is written as it comes, one tensor in memory.
        tokenizer: a ``tokenizers.Tokenizer`` saved as ``tokenizer.json`` (optional).
        tokenizer_config, generation_config: dicts written as those JSON files (optional).
        progress: optional callable ``(n_done, n_total, name)`` after each tensor.

    transformers' ``BitNetForCausalLM``, :func:`bitnet_edu.load_model` and bitnet.cpp's
    converter read the result.  Raises ValueError naming the tensor on a missing tensor, a wrong
    shape or a non-ternary linear; nothing is left under ``model.safetensors`` then.
    """
    cfg = config if isinstance(config, BitNetConfig) else BitNetConfig.from_dict(config)
    want = expected_tensors(cfg)
    specs = _specs(want)
    reciprocal = cfg.linear_class == "bitlinear"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with SafetensorsWriter(out / "model.safetensors", specs, metadata={"format": "pt"}) as w:
        for k, (name, a) in enumerate(in_order(tensors, list(want))):
            w.write(name, _packed(name, a, want[name], reciprocal))
            if progress:
                progress(k + 1, len(want), name)
    d = cfg.to_dict()
    if is_master_layout(d.get("architectures")):
        # 1bitLLM's block in the packed layout is 2B4T's (canonical sub-norm names, scales):
        # transformers' own BitNetForCausalLM runs it; its remote code (auto_map) is not here
        d.update(architectures=["BitNetForCausalLM"], model_type="bitnet")
        d.pop("auto_map", None)
    d["quantization_config"] = dict(QUANT_CONFIG_BITLINEAR if reciprocal else QUANT_CONFIG)
    d.setdefault("torch_dtype", "bfloat16")
    _write_json(out / "config.json", d)
    if generation_config is not None:
        _write_json(out / "generation_config.json", generation_config)
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
    if tokenizer_config is not None:
        _write_json(out / "tokenizer_config.json", tokenizer_config)
    return out
