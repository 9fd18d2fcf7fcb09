"""Fuzz the model loaders: every mutated model file must give a clean ``ValueError``.

Six formats, each mutating one kind of file of a small valid model written by this package:

* ``safetensors``: ``model.safetensors`` bytes and header JSON (dtypes, shapes, data offsets out
  of range or overlapping, deep nesting, header length, NaN weights);
* ``config``: ``config.json`` values (0, -1, 2**31, 1e308, NaN, strings, lists, null, missing
  keys, huge sizes) over the tiny model and the shipped default model;
* ``generation_config``: ``generation_config.json``;
* ``tokenizer``: ``tokenizer.json`` (vocabulary ids, merges, added tokens, garbage);
* ``index``: ``model.safetensors.index.json`` of a two-shard model (``../`` and absolute shard
  paths, missing shards, wrong types);
* ``gguf``: a GGUF I2_S file (bytes, metadata values and types, tensor records).

Each case runs ``load_model(path)``, then a one-token forward and a one-token ``generate`` when
it loads, in a child forked from this already-imported process (compiled kernels included), with
an address-space limit (``RLIMIT_AS``) and a time limit, so a crash, a hang or a huge allocation
is counted, not fatal.  Outcomes:

============  =============================================================  ==========
clean         a ``ValueError`` (or subclass): the expected result            ok
loaded        loaded and ran (the mutation was harmless, or warned)          ok
nonfinite     loaded, but the logits hold NaN or inf (from a mutation not     reported
              known to be invalid, e.g. a flipped weight byte)
accepted      loaded without a warning although the input is invalid         failure
              (shard outside the directory, NaN weights, a config that
              contradicts the weights, overlapping data, bad token ids, ...)
other         any other exception (type and message recorded)                failure
memory        ``MemoryError``: an allocation ran into the address limit      failure
crash         the child died from a signal (segfault, abort)                 failure
hang          the child ran past the time limit                              failure
============  =============================================================  ==========

A ``clean`` load error whose message names neither the file nor its directory is counted in
the ``unnamed`` column (every loader error should name its file).  The children share one
Numba thread pool set up before the first fork: Numba's own ``workqueue`` (GNU OpenMP's does
not survive ``fork``), so run the fuzzer in a fresh process.

    python -m bitnet_edu.fuzz --n 10000             # all formats, 10000 cases in all
    python -m bitnet_edu.fuzz --n 500 --format config --seed 3
    python -m bitnet_edu.fuzz --format index --case 17 --keep /tmp/case   # replay one case

prints a table of outcomes per format, then every signature of a non-clean outcome (kind,
exception type, where it was raised) with its count and first examples; the exit status is 1
if any case ended in a failure outcome.  POSIX only (``os.fork``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import re
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "FAILURES", "Case", "Outcome", "Report", "Seeds", "make_case", "run",
           "run_case", "main"]

FORMATS = ("safetensors", "config", "generation_config", "tokenizer", "index", "gguf")
#: outcome kinds that make the run fail
FAILURES = ("accepted", "other", "memory", "crash", "hang")
KINDS = ("clean", "loaded", "nonfinite") + FAILURES

#: the tiny seed model: hidden and intermediate sizes are multiples of 128 (I2_S blocks), the
#: vocabulary is the shipped tokenizer's
TINY = dict(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            max_position_embeddings=64, rope_theta=10000.0, bos_token_id=0, eos_token_id=0)
_SHIPPED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors")
_SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")

U64 = [0, 1, 3, 31, 2**31, 2**32 - 1, 2**32, 2**40, 2**63, 2**64 - 1]
VALUES = [0, -1, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**63, 2**64, 10**6, 10**100, 1e308,
          -1e308, 1e-308, 0.5, 2.0, float("nan"), float("inf"), float("-inf"), "4", "", "x",
          "nan", [], [1], [1, 2], [[]], {}, {"a": 1}, None, True, False]
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "U64", "BOOL",
          "F8_E4M3", "bf16", "", 5, None, ["F32"]]
SHAPES = [[], [0], [-1], [1], [2**31], [2**63], [2**64], [1] * 64, ["4"], [1.5], None, "x",
          [[2]], [True], [-4, -8]]


@dataclass
class Case:
    """One mutated model: ``files`` maps a path relative to the model directory to its new
    bytes (None deletes it); every other seed file is kept.  ``target`` is what
    ``load_model`` gets, relative to the case directory."""

    format: str
    index: int
    seed_dir: str
    desc: str
    files: dict = field(default_factory=dict)
    target: str = "."
    must_fail: bool = False


@dataclass
class Outcome:
    """What one case did: ``kind`` in :data:`KINDS`, ``detail`` the exception or signal."""

    case: Case
    kind: str
    detail: str = ""
    named: bool = True  # a clean error names its file or directory
    seconds: float = 0.0
    trace: str = ""  # the traceback of an ``other`` exception


# ---- seeds ------------------------------------------------------------------------------------

class Seeds:
    """Valid models to mutate, written under ``root``: ``tiny/`` (an HF packed directory of a
    random 2-layer model with the shipped tokenizer and generation config), ``default/`` (the
    shipped default model), ``sharded/`` (the tiny model in two shards with an index) and
    ``gguf/model.gguf`` (the tiny model exported to I2_S)."""

    def __init__(self, root):
        import bitnet_edu
        from .formats.gguf import to_gguf
        from .formats.hf import write_hf_checkpoint
        from .model import random_model

        self.root = Path(root)
        shipped = Path(bitnet_edu.DEFAULT_MODEL)
        self.default = self._dir("default")
        for name in _SHIPPED:
            shutil.copyfile(shipped / name, self.default / name)
        self.tiny = self._dir("tiny")
        # the shipped tokenizer over a random model: its vocabulary must cover the tokenizer's ids
        vocab = json.loads((shipped / "config.json").read_text())["vocab_size"]
        config, weights = random_model({**TINY, "vocab_size": vocab}, seed=0,
                                       head="float32").to_checkpoint()
        write_hf_checkpoint(self.tiny, config, weights,
                            generation_config=json.loads(
                                (shipped / "generation_config.json").read_text()))
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(shipped / name, self.tiny / name)
        self.sharded = self._dir("sharded")
        self._shard(self.tiny, self.sharded)
        self.gguf = self._dir("gguf")
        to_gguf(self.tiny, self.gguf / "model.gguf", progress=False)
        # a valid shard just outside each case directory: a loader that follows "../" loads it
        self.cases = self._dir("cases")
        shutil.copyfile(self.sharded / "model-00001-of-00002.safetensors",
                        self.cases / "outside.safetensors")
        self.blobs = {}  # (seed dir name, file) -> bytes

    def _dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def _shard(src: Path, dst: Path) -> None:
        from .formats.safetensors import read_safetensors, write_safetensors

        raw = read_safetensors(src / "model.safetensors", raw_bf16=True)
        header = json.loads(_st_split((src / "model.safetensors").read_bytes())[0])
        names = [n for n in header if n != "__metadata__"]
        half = len(names) // 2
        weight_map = {}
        for k, part in enumerate((names[:half], names[half:])):
            fname = f"model-0000{k + 1}-of-00002.safetensors"
            bf16 = {n for n in part if header[n]["dtype"] == "BF16"}
            write_safetensors(dst / fname, {n: raw[n] for n in part}, bf16=bf16)
            weight_map.update({n: fname for n in part})
        index = {"metadata": {"total_size": sum(a.nbytes for a in raw.values())},
                 "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        for f in src.iterdir():
            if f.suffix == ".json":
                shutil.copyfile(f, dst / f.name)

    def blob(self, seed_dir: Path, name: str) -> bytes:
        key = (seed_dir.name, name)
        if key not in self.blobs:
            self.blobs[key] = (seed_dir / name).read_bytes()
        return self.blobs[key]

    def materialize(self, case: Case, where: Path) -> Path:
        """Write the case's model directory at ``where`` (unchanged files hard-linked)."""
        src = Path(case.seed_dir)
        where.mkdir(parents=True)
        for f in src.iterdir():
            if f.name not in case.files:
                try:
                    os.link(f, where / f.name)
                except OSError:
                    shutil.copyfile(f, where / f.name)
        for name, data in case.files.items():
            if data is not None:
                (where / name).write_bytes(data)
        return where / case.target


# ---- mutations --------------------------------------------------------------------------------

def _byte_ops(rng: random.Random, blob: bytes, header: int) -> tuple[bytes, str]:
    """1-4 byte-level mutations (xor, set, u64, insert, delete, truncate); half the positions
    fall in the first ``header`` bytes."""
    b, ops = bytearray(blob), []
    for _ in range(rng.randint(1, 4)):
        p = rng.randrange(max(header, 1)) if rng.random() < 0.5 else rng.randrange(len(b) + 1)
        op = rng.choice(("xor", "set", "u64", "insert", "delete", "truncate"))
        if op == "xor" and p < len(b):
            v = rng.randint(1, 255)
            b[p] ^= v
        elif op == "set" and p < len(b):
            v = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
            b[p] = v
        elif op == "u64":
            v = rng.choice(U64)
            b[p:p + 8] = v.to_bytes(8, "little")
        elif op == "insert":
            v = bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
            b[p:p] = v
        elif op == "delete":
            v = rng.randint(1, 17)
            del b[p:p + v]
        else:
            op, v = "truncate", len(b) - p
            del b[p:]
        ops.append(f"{op}@{p}:{v!r}"[:60])
    return bytes(b), "bytes " + " ".join(ops)


def _deep(rng: random.Random) -> str:
    n = rng.choice((100, 1000, 10**5))
    return rng.choice(("[" * n + "]" * n, '{"a":' * n + "1" + "}" * n))


def _value(rng: random.Random):
    return rng.choice(VALUES)


def _dumps(doc) -> bytes:
    """JSON bytes (NaN/Infinity as Python's json reads them); a ``"@@DEEPn@@"`` string becomes
    ``n`` nested lists (written as text: json.dumps itself would overflow the stack)."""
    text = json.dumps(doc, indent=1)
    m = re.search(r'"@@DEEP(\d+)@@"', text)
    if m:
        n = int(m.group(1))
        text = text[:m.start()] + "[" * n + "]" * n + text[m.end():]
    return text.encode()


def _st_split(blob: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return blob[8:8 + n], blob[8 + n:]


def _st_join(text: bytes, data: bytes) -> bytes:
    return len(text).to_bytes(8, "little") + text + data


def _st_header_edit(rng: random.Random, blob: bytes) -> tuple[bytes, str, bool]:
    """A header-level edit of a safetensors file: ``(bytes, description, must_fail)``."""
    text, data = _st_split(blob)
    header = json.loads(text)
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names)
    e = header[name]
    b, end = e["data_offsets"]
    kind = rng.choice(("dtype", "shape", "offsets", "overlap", "shift", "delete", "rename",
                       "add", "metadata", "not_object", "deep", "length", "pad", "non_utf8",
                       "nan", "inf"))
    must_fail = False
    if kind == "dtype":
        e["dtype"] = rng.choice(DTYPES)
        desc = f"{name} dtype={e['dtype']!r}"
    elif kind == "shape":
        e["shape"] = rng.choice(SHAPES + [list(reversed(e["shape"])), [x * 2 for x in e["shape"]]])
        desc = f"{name} shape={e['shape']!r}"
    elif kind == "offsets":
        e["data_offsets"] = rng.choice([[-1, end], [0, 2**64], [b, b], [end, b], [b + 1, end + 1],
                                        [b, 2**63], [0.5, 3], "x", [b], None, [b, end, 3],
                                        [b + len(data), end + len(data)], [-2**63, end]])
        desc = f"{name} data_offsets={e['data_offsets']!r}"
    elif kind in ("overlap", "shift"):
        same = [n for n in names if n != name and header[n]["data_offsets"][1]
                - header[n]["data_offsets"][0] == end - b]
        if kind == "overlap" and same:  # alias another tensor's bytes exactly
            other = rng.choice(same)
            e["data_offsets"] = list(header[other]["data_offsets"])
            desc = f"{name} data_offsets = those of {other}"
        else:  # slide the range into a neighbour, same size
            k = rng.choice((1, 2, (end - b) // 2 or 1))
            if end + k > len(data):
                k = -k
            e["data_offsets"] = [b + k, end + k]
            desc = f"{name} data_offsets shifted by {k}"
        must_fail = True  # the spec requires disjoint ranges that cover the data
    elif kind == "delete":
        del header[name]
        desc = f"{name} deleted"
        must_fail = True
    elif kind == "rename":
        new = rng.choice(("", "x", "model.layers.99.input_layernorm.weight", name + "\x00",
                          "model.norm.weight", name.upper()))
        header[new] = header.pop(name)
        desc = f"{name} renamed {new!r}"
    elif kind == "add":
        header["extra.weight"] = rng.choice([
            {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]},
            {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, 5, None, []])
        desc = f"extra entry {header['extra.weight']!r}"
    elif kind == "metadata":
        header["__metadata__"] = rng.choice([None, 5, [], "s", {"format": 5},
                                             {"x": "y" * 10**6}, {"format": {"a": []}}])
        desc = f"__metadata__={str(header['__metadata__'])[:40]}"
    elif kind == "not_object":
        return _st_join(rng.choice([b"[]", b"5", b'"x"', b"null", b""]), data), \
            "header not an object", True
    elif kind == "deep":
        return _st_join(_deep(rng).encode(), data), "deeply nested header", True
    elif kind == "length":
        n = rng.choice((0, 1, len(text) - 1, len(text) + 1, 2**63, 2**64 - 1, len(blob)))
        return n.to_bytes(8, "little") + text + data, f"header length {n}", n != len(text)
    elif kind == "pad":
        return _st_join(text + b" " * rng.choice((1, 7, 4096)), data), "header padded", False
    elif kind == "non_utf8":
        p = rng.randrange(len(text))
        return _st_join(text[:p] + b"\xff\xfe" + text[p:], data), f"0xfffe at {p}", True
    else:  # kind in ("nan", "inf"): one element of a float tensor
        floats = [n for n in names if header[n]["dtype"] in ("BF16", "F32", "F16")]
        name = rng.choice(floats)
        b, end = header[name]["data_offsets"]
        pat = {"BF16": {"nan": b"\xc0\x7f", "inf": b"\x80\x7f"},
               "F16": {"nan": b"\x00\x7e", "inf": b"\x00\x7c"},
               "F32": {"nan": b"\x00\x00\xc0\x7f", "inf": b"\x00\x00\x80\x7f"}}
        v = pat[header[name]["dtype"]][kind]
        p = b + rng.randrange((end - b) // len(v)) * len(v)
        data = data[:p] + v + data[p + len(v):]
        return _st_join(text, data), f"{name} element {(p - b) // len(v)} = {kind}", True
    return _st_join(json.dumps(header).encode(), data), desc, must_fail


def _gen_safetensors(rng: random.Random, seeds: Seeds) -> tuple:
    blob = seeds.blob(seeds.tiny, "model.safetensors")
    if rng.random() < 0.4:
        out, desc = _byte_ops(rng, blob, 8 + int.from_bytes(blob[:8], "little"))
        must_fail = False
    else:
        out, desc, must_fail = _st_header_edit(rng, blob)
    return seeds.tiny, {"model.safetensors": out}, desc, must_fail


def _shape_of(doc: dict):
    """The tensor shapes a config implies, or None if it is not a small valid config."""
    from .config import BitNetConfig
    from .formats.schema import expected_tensors

    for k in _SHAPE_KEYS[:7]:
        v = doc.get(k)
        if v is not None and not (type(v) is int and 0 < v <= 10**5):
            return None
    try:
        return expected_tensors(BitNetConfig.from_dict(doc))
    except Exception:  # noqa: BLE001 - any failure means "not a valid config"
        return None


def _bad_number(v, low: float, strict: bool) -> bool:
    """True unless ``v`` is a finite number above ``low`` (or equal, unless ``strict``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return True
    return not math.isfinite(v) or v < low or (strict and v == low)


def _bad_ids(v) -> bool:
    """A token id entry that is not None, an int >= 0 or a non-empty list of them."""
    def ok(x):  # an int, or a float with an integral value (2.0); never a bool
        if isinstance(x, float) and math.isfinite(x) and x == int(x):
            x = int(x)
        return type(x) is int and 0 <= x < 2**63

    return not (v is None or ok(v) or (isinstance(v, list) and v and all(map(ok, v))))


def _config_must_fail(old: dict, new) -> bool:
    """Whether a mutated ``config.json`` is invalid for the weights of the fuzzing seed checkpoint (the file it was mutated from)."""
    if not isinstance(new, dict):
        return True
    if _shape_of(new) != _shape_of(old):
        return True  # shapes differ from the weights, or the config is no valid config
    if "rope_theta" in new and _bad_number(new["rope_theta"], 0, strict=True):
        return True
    if "rms_norm_eps" in new and _bad_number(new["rms_norm_eps"], 0, strict=False):
        return True
    ctx = new.get("max_position_embeddings", 1)
    if isinstance(ctx, bool) or not isinstance(ctx, (int, float)) or \
            _bad_number(ctx, 1, strict=False) or ctx != int(ctx):
        return True  # a context length is a whole number >= 1
    return any(_bad_ids(new.get(k)) for k in ("bos_token_id", "eos_token_id"))


def _json_edit(rng: random.Random, doc, keys: list) -> tuple[object, str]:
    """1-3 edits of a JSON object: a key's value replaced or deleted, or the whole document."""
    doc = copy.deepcopy(doc)
    r = rng.random()
    if r < 0.05:
        new = rng.choice([[], [doc], "x", 5, None, True])
        return new, f"document = {str(new)[:40]}"
    if r < 0.1:
        k = rng.choice(keys)
        doc[k] = f"@@DEEP{rng.choice((100, 1000, 10**5))}@@"  # _dumps writes the nesting
        return doc, f"{k} = nested {doc[k][6:-2]} deep"
    edits = []
    for _ in range(rng.randint(1, 3)):
        k = rng.choice(keys)
        if rng.random() < 0.2:
            doc.pop(k, None)
            edits.append(f"-{k}")
        else:
            doc[k] = _value(rng)
            edits.append(f"{k}={doc[k]!r}"[:50])
    return doc, " ".join(edits)


def _text_garbage(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    r = rng.random()
    if r < 0.3:
        p = rng.randrange(len(blob))
        return blob[:p], f"truncated at {p}"
    if r < 0.45:
        return _deep(rng).encode(), "deeply nested document"
    if r < 0.55:
        return rng.choice([b"", b"\xff\xfe", b"\x00" * 16, b"{", b"NaN"]), "garbage"
    return _byte_ops(rng, blob, len(blob))


def _json_or_none(blob: bytes):
    try:
        return json.loads(blob)
    except Exception:  # noqa: BLE001
        return None


def _gen_config(rng: random.Random, seeds: Seeds) -> tuple:
    src = seeds.tiny if rng.random() < 0.7 else seeds.default
    blob = seeds.blob(src, "config.json")
    old = json.loads(blob)
    if rng.random() < 0.15:
        out, desc = _text_garbage(rng, blob)
        new = _json_or_none(out)
        return src, {"config.json": out}, desc, new is None or _config_must_fail(old, new)
    keys = list(old) + ["rope_scaling", "rope_parameters", "pad_token_id"]
    keys += list(_SHAPE_KEYS) * 2 + ["max_position_embeddings", "rope_theta", "rms_norm_eps"]
    if rng.random() < 0.15:  # the quantization config
        new, desc = copy.deepcopy(old), ""
        qc = new.setdefault("quantization_config", {})
        k = rng.choice(("quant_method", "linear_class", "quantization_mode", None))
        if k is None:
            new["quantization_config"] = _value(rng)
            desc = f"quantization_config={new['quantization_config']!r}"
        else:
            qc[k] = rng.choice((_value(rng), "online", "offline", "gptq", "bitlinear"))
            desc = f"quantization_config.{k}={qc[k]!r}"
    elif rng.random() < 0.1:
        new = copy.deepcopy(old)
        k = rng.choice(("rope_scaling", "rope_parameters"))
        new[k] = rng.choice(({"rope_type": "linear", "factor": 2.0}, {"type": 5}, {"rope_type":
                             None}, {"rope_theta": float("nan")}, [1], "x", 3, {"rope_type": []}))
        desc = f"{k}={new[k]!r}"
    else:
        new, desc = _json_edit(rng, old, keys)
    return src, {"config.json": _dumps(new)}, desc, _config_must_fail(old, new)


def _gen_generation_config(rng: random.Random, seeds: Seeds) -> tuple:
    src = seeds.tiny if rng.random() < 0.5 else seeds.default
    blob = seeds.blob(src, "generation_config.json")
    if rng.random() < 0.3:
        out, desc = _text_garbage(rng, blob)
    else:
        keys = ["eos_token_id"] * 3 + ["bos_token_id", "pad_token_id", "temperature", "top_k",
                                       "top_p", "do_sample", "repetition_penalty",
                                       "max_new_tokens"]
        new, desc = _json_edit(rng, json.loads(blob), keys)
        out = _dumps(new)
    new = _json_or_none(out)
    must_fail = not isinstance(new, dict) or _bad_ids(new.get("eos_token_id"))
    if rng.random() < 0.05:
        return src, {"generation_config.json": None}, "generation_config.json deleted", False
    return src, {"generation_config.json": out}, desc, must_fail


def _gen_tokenizer(rng: random.Random, seeds: Seeds) -> tuple:
    src = seeds.tiny if rng.random() < 0.5 else seeds.default
    blob = seeds.blob(src, "tokenizer.json")
    if rng.random() < 0.3:
        out, desc = _text_garbage(rng, blob)
        return src, {"tokenizer.json": out}, desc, _json_or_none(out) is None
    doc = json.loads(blob)
    model = doc["model"]
    kind = rng.choice(("doc", "model_type", "vocab_id", "vocab", "merges", "added", "pre",
                       "normalizer", "decoder", "post", "delete", "vocab_big"))
    must_fail = False
    if kind == "doc":
        doc = rng.choice([[], None, 5, "x", {}, {"model": None}])
        desc, must_fail = f"document = {doc!r}", True
    elif kind == "model_type":
        model["type"] = rng.choice(("WordPiece", "Unigram", "WordLevel", "X", 5, None))
        desc = f"model.type={model['type']!r}"
    elif kind == "vocab_id":
        tok = rng.choice(list(model["vocab"]))
        model["vocab"][tok] = _value(rng)
        desc = f"vocab[{tok!r}]={model['vocab'][tok]!r}"
    elif kind == "vocab_big":  # ids the model has no embedding row for
        tok = rng.choice(list(model["vocab"]))
        model["vocab"][tok] = rng.choice((2048, 4095, 2**31 - 1, 2**32, 2**63))
        desc = f"vocab[{tok!r}]={model['vocab'][tok]!r}"
    elif kind == "vocab":
        model["vocab"] = rng.choice(([], {}, None, "x", {"a": 0}))
        desc = f"vocab={model['vocab']!r}"
    elif kind == "merges":
        m = model.get("merges") or []
        i = rng.randrange(len(m) + 1)
        m[i:i] = [rng.choice(("a b c", "zzz qqq", "", 5, None, ["a"], ["a", "b", "c"], []))]
        desc = f"merges[{i}] = {m[i]!r}"
    elif kind == "added":
        added = doc.setdefault("added_tokens", [])
        entry = {"id": rng.choice((-1, 2**31, 2**64, "x", None, 0, 2047, 2048)),
                 "content": rng.choice(("<x>", "", None, 5, "Hi")), "special": True,
                 "single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
        if rng.random() < 0.3:
            entry.pop(rng.choice(list(entry)))
        added.append(entry)
        desc = f"added token {entry!r}"[:90]
    elif kind in ("pre", "normalizer", "decoder", "post"):
        k = {"pre": "pre_tokenizer", "post": "post_processor"}.get(kind, kind)
        doc[k] = rng.choice(({"type": "X"}, {"type": None}, 5, "x", [], {"type": "Sequence",
                             "pretokenizers": [{"type": "Split", "pattern": {"Regex": "("},
                                                "behavior": "Isolated", "invert": False}]},
                             {"type": "TemplateProcessing", "single": [{"SpecialToken":
                              {"id": "<nope>", "type_id": 0}}], "pair": [],
                              "special_tokens": {}}))
        desc = f"{k}={doc[k]!r}"[:90]
    else:
        k = rng.choice(list(doc))
        del doc[k]
        desc = f"-{k}"
    return src, {"tokenizer.json": _dumps(doc)}, desc, must_fail


_INDEX = "model.safetensors.index.json"


def _gen_index(rng: random.Random, seeds: Seeds) -> tuple:
    blob = seeds.blob(seeds.sharded, _INDEX)
    if rng.random() < 0.2:
        out, desc = _text_garbage(rng, blob)
        return seeds.sharded, {_INDEX: out}, desc, True
    doc = json.loads(blob)
    wm = doc["weight_map"]
    shard1 = "model-00001-of-00002.safetensors"
    kind = rng.choice(("path", "path", "path", "type", "map", "missing_file", "empty", "remap"))
    must_fail, files = True, {}
    if kind == "path":  # every tensor of one shard gets the new path
        which = rng.choice(sorted(set(wm.values())))
        inside = str(seeds.sharded / which)
        new = rng.choice(("../outside.safetensors", "../../cases/outside.safetensors",
                          os.path.abspath(seeds.cases / "outside.safetensors"), inside,
                          "/etc/passwd", "/dev/zero", "/dev/null", "/proc/self/mem", "/", "",
                          ".", "..", _INDEX, "config.json", "nope.safetensors",
                          "sub/../" + which, "./" + which, which + "\x00", "~/" + which,
                          "C:\\x.safetensors", "\\\\server\\x"))
        for k, v in wm.items():
            if v == which:
                wm[k] = new
        # a path that stays inside the directory and names the same file is fine
        must_fail = new not in ("sub/../" + which, "./" + which)
        desc = f"{which} -> {new!r}"
    elif kind == "type":
        k = rng.choice(list(wm))
        wm[k] = rng.choice((5, None, [], {}, True, 1.5, [shard1]))
        desc = f"weight_map[{k!r}]={wm[k]!r}"
    elif kind == "map":
        doc["weight_map"] = rng.choice((None, [], "x", 5, [[k, v] for k, v in wm.items()]))
        desc = f"weight_map={str(doc['weight_map'])[:40]}"
        if rng.random() < 0.3:
            doc = rng.choice(([], None, "x", {}))
            desc = f"document={doc!r}"
    elif kind == "missing_file":
        which = rng.choice(sorted(set(wm.values())))
        files[which] = None
        desc = f"{which} deleted"
    elif kind == "empty":
        doc["weight_map"] = {}
        desc = "weight_map = {}"
    else:  # a tensor listed under the shard that does not hold it: harmless when the loader
        k = rng.choice(list(wm))  # finds each tensor in the shard headers
        other = sorted(set(wm.values()) - {wm[k]})[0]
        wm[k] = other
        desc, must_fail = f"{k} listed in {other}", False
    files[_INDEX] = _dumps(doc)
    return seeds.sharded, files, desc, must_fail


def _gguf_parts(seeds: Seeds):
    """``(metadata {key: Value}, tensors {name: TensorData})`` of the GGUF seed."""
    from .formats.gguf.container import GGUFReader, TensorData, Value

    if "gguf_parts" not in seeds.blobs:
        path = seeds.gguf / "model.gguf"
        r, blob = GGUFReader(path), seeds.blob(seeds.gguf, "model.gguf")
        meta = {k: Value(r.types[k][0], v, r.types[k][1]) for k, v in r.metadata.items()}
        tensors = {n: TensorData(t.ggml_type, t.shape,
                                 np.frombuffer(blob, np.uint8, t.nbytes, t.offset))
                   for n, t in r.tensors.items()}
        seeds.blobs["gguf_parts"] = meta, tensors
        del r
    return seeds.blobs["gguf_parts"]


def _gguf_value(rng: random.Random, key: str, v):
    from .formats.gguf import container as c

    Value = c.Value
    if isinstance(v.value, (int, float)) and not isinstance(v.value, bool) and rng.random() < .7:
        x = rng.choice((0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, -1, 2**63, v.value * 2,
                        v.value + 1, float("nan"), float("inf"), -1.0, 1e38))
        if isinstance(x, float):
            return Value(c.T_FLOAT32, x)
        if x < 0:
            return Value(c.T_INT32, x)
        return Value(c.T_UINT64 if x >= 2**32 else c.T_UINT32, x)
    if v.type == c.T_ARRAY and rng.random() < 0.6:
        arr = v.value
        r = rng.random()
        if r < 0.3:
            arr = arr[: rng.randrange(len(arr) + 1)]
        elif r < 0.6 and isinstance(arr, list):
            arr = list(arr)
            arr[rng.randrange(len(arr))] = rng.choice(("", "\x00", "a b c", "Ġ" * 300, "zz yy"))
        elif isinstance(arr, np.ndarray):
            arr = arr.copy()
            arr[rng.randrange(len(arr))] = rng.choice((-1, 0, 127, 2**31 - 1)) \
                if arr.dtype.kind in "iu" else float("nan")
        return Value(v.type, arr, v.subtype)
    return rng.choice((Value(c.T_STRING, "x"), Value(c.T_BOOL, True), Value(c.T_FLOAT32, 0.5),
                       Value(c.T_ARRAY, ["a"], c.T_STRING), Value(c.T_UINT8, 255),
                       Value(c.T_ARRAY, np.zeros(3, np.int32), c.T_INT32)))


def _gguf_must_fail(key: str, new) -> bool:
    arch = key.split(".")[0]
    if arch != "bitnet-b1.58":
        return False
    sub = key[len(arch) + 1:]
    if sub in ("embedding_length", "block_count", "feed_forward_length", "vocab_size",
               "attention.head_count", "attention.head_count_kv", "rope.dimension_count"):
        return True  # any change contradicts the tensors (or is no size at all)
    if sub == "rope.freq_base":
        return _bad_number(new.value, 0, strict=True) or not isinstance(new.value, float)
    if sub == "attention.layer_norm_rms_epsilon":
        return _bad_number(new.value, 0, strict=False) or not isinstance(new.value, float)
    return False


def _gen_gguf(rng: random.Random, seeds: Seeds) -> tuple:
    from .formats.gguf.container import GGML_F32, TensorData, write_gguf

    blob = seeds.blob(seeds.gguf, "model.gguf")
    if rng.random() < 0.5:
        header = len(blob) - sum(t.data.size for t in _gguf_parts(seeds)[1].values())
        out, desc = _byte_ops(rng, blob, header)
        return seeds.gguf, {"model.gguf": out}, desc, False
    meta, tensors = _gguf_parts(seeds)
    meta, tensors, must_fail = dict(meta), dict(tensors), False
    if rng.random() < 0.7:
        key = rng.choice(list(meta))
        if rng.random() < 0.15:
            del meta[key]
            desc = f"-{key}"
            must_fail = _gguf_must_fail(key, None) and not key.endswith("head_count_kv")
        else:
            meta[key] = _gguf_value(rng, key, meta[key])
            v = meta[key].value
            desc = f"{key}={v[:3] if isinstance(v, (list, np.ndarray)) else v!r} ({meta[key].type})"
            must_fail = _gguf_must_fail(key, meta[key])
    else:
        name = rng.choice(list(tensors))
        t = tensors[name]
        kind = rng.choice(("drop", "shape", "nan", "swap"))
        if kind == "drop":
            del tensors[name]
            desc, must_fail = f"tensor {name} dropped", True
        elif kind == "shape":
            shape = rng.choice(((t.shape[0] * 2,) + t.shape[1:], t.shape[::-1], (0,), (1,) * 4))
            tensors[name] = TensorData(t.ggml_type, shape, t.data)
            desc = f"tensor {name} shape {shape}"
            must_fail = shape != t.shape
        elif kind == "nan" and t.ggml_type == GGML_F32:
            a = t.data.view(np.float32).copy()
            a[rng.randrange(a.size)] = rng.choice((np.nan, np.inf))
            tensors[name] = TensorData(t.ggml_type, t.shape, a)
            desc, must_fail = f"tensor {name} holds a non-finite value", True
        else:
            other = rng.choice([n for n in tensors if tensors[n].shape == t.shape])
            tensors[name], tensors[other] = tensors[other], tensors[name]
            desc = f"tensors {name} and {other} swapped"  # a valid file, other weights
    tmp = seeds.root / f"mutant-{os.getpid()}.gguf"
    try:
        write_gguf(tmp, meta, tensors)
        out = tmp.read_bytes()
    except (ValueError, OverflowError, TypeError) as e:  # the writer refused the value itself
        out, desc = blob, f"{desc} (unwritable: {type(e).__name__}; seed unchanged)"
        must_fail = False
    finally:
        tmp.unlink(missing_ok=True)
    return seeds.gguf, {"model.gguf": out}, desc, must_fail


_GENERATORS = {"safetensors": _gen_safetensors, "config": _gen_config,
               "generation_config": _gen_generation_config, "tokenizer": _gen_tokenizer,
               "index": _gen_index, "gguf": _gen_gguf}


def make_case(fmt: str, index: int, seeds: Seeds, seed: int = 0) -> Case:
    """Case ``index`` of format ``fmt`` (the same for the same ``seed``)."""
    rng = random.Random(f"{seed}:{fmt}:{index}")
    src, files, desc, must_fail = _GENERATORS[fmt](rng, seeds)
    target = "model.gguf" if fmt == "gguf" else "."
    return Case(fmt, index, str(src), desc, files, target, bool(must_fail))


# ---- running one case -------------------------------------------------------------------------

def _exercise(path: Path) -> dict:
    """Load ``path`` and run it (in the child): the outcome as a dict."""
    from .model import load_model

    stage = "load"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            m = load_model(path, progress=False)
            stage = "forward"
            bos = m.config.bos_token_id
            first = bos if type(bos) is int and 0 <= bos < m.config.vocab_size else 0
            logits = m.forward([first], last_only=True)
            finite = bool(np.isfinite(logits).all())
            if m.tokenizer is not None:
                stage = "generate"
                m.generate("Hi", max_new_tokens=1)
        except ValueError as e:
            return {"kind": "clean", "detail": f"{type(e).__name__} ({stage}): {e}",
                    "stage": stage}
        except MemoryError as e:
            return {"kind": "memory", "detail": f"MemoryError ({stage}): {e}"}
        except BaseException as e:  # noqa: BLE001 - a Rust panic is a BaseException
            tb = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{Path(tb.filename).name}:{tb.lineno}"
            return {"kind": "other", "detail": f"{type(e).__name__} ({stage}, {where}): {e}",
                    "trace": traceback.format_exc()[-3000:]}
    # an explicit warning from the loader, not NumPy's overflow notes or a deprecation
    warned = [str(w.message) for w in caught
              if not issubclass(w.category, (DeprecationWarning, RuntimeWarning))]
    return {"kind": "loaded" if finite else "nonfinite", "warned": warned,
            "detail": "; ".join(warned)[:300]}


def _address_space() -> int:
    """This process's virtual memory size in bytes (the child's limit is set above it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(path: Path, wfd: int, mem_bytes: int, timeout: float, exercise) -> None:
    import faulthandler
    import resource

    try:
        faulthandler.disable()  # a crash is an outcome here, not a traceback on the terminal
        limit = _address_space() + mem_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 2**20, 64 * 2**20))
        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        res = exercise(path)
        msg = json.dumps(res, default=str).encode()
    except BaseException as e:  # noqa: BLE001 - never return into the parent's code
        msg = json.dumps({"kind": "other", "detail": f"harness: {type(e).__name__}: {e}"}
                         ).encode()
    try:
        os.write(wfd, msg[: 60000])
    finally:
        os._exit(0)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


class _Running:
    """A forked child running one case, and its result pipe."""

    def __init__(self, case: Case, path: Path, where: Path, mem_bytes: int, timeout: float,
                 exercise=None):
        self.case, self.where, self.start = case, where, time.monotonic()
        self.deadline = self.start + timeout
        rfd, wfd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(path, wfd, mem_bytes, timeout, exercise or _exercise)
        os.close(wfd)
        self.pid, self.rfd, self.data = pid, rfd, b""

    def read(self) -> bool:
        """Read what is there; True at end of file."""
        chunk = os.read(self.rfd, 65536)
        self.data += chunk
        return not chunk

    def finish(self, hung: bool) -> Outcome:
        if hung:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        os.close(self.rfd)
        secs = time.monotonic() - self.start
        if hung:
            return Outcome(self.case, "hang", f"no result after {secs:.1f} s", seconds=secs)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return Outcome(self.case, "hang", "CPU time limit", seconds=secs)
            return Outcome(self.case, "crash", _signal_name(sig), seconds=secs)
        try:
            res = json.loads(self.data)
        except ValueError:
            return Outcome(self.case, "crash", f"exit status {os.WEXITSTATUS(status)}, "
                           "no result", seconds=secs)
        kind, detail = res["kind"], res.get("detail", "")
        self.trace = res.get("trace", "")
        if kind in ("loaded", "nonfinite") and self.case.must_fail and not res.get("warned"):
            kind = "accepted"
        # only a load error has a file to name; a forward's "context too long" has none
        named = kind != "clean" or res.get("stage") != "load" or \
            _names_file(detail, self.case, self.where)
        return Outcome(self.case, kind, detail, named, secs, self.trace)


def _names_file(msg: str, case: Case, where: Path) -> bool:
    return str(where) in msg or any(name in msg for name in case.files) or \
        (case.target != "." and case.target in msg)


def run_case(case: Case, seeds: Seeds, *, timeout: float = 20.0, mem_mb: int = 2048,
             keep=None, exercise=None) -> Outcome:
    """Run one case in a forked child and return its outcome.  ``keep``: a directory to write
    the case's model into (kept); by default a temporary one, removed afterwards.
    ``exercise``: what the child does with the model's path, returning an outcome dict
    (default: load it, run a forward and a ``generate``)."""
    where = Path(keep) if keep else seeds.cases / f"{case.format}-{case.index}-{os.getpid()}"
    path = seeds.materialize(case, where)
    job = _Running(case, path, where, mem_mb * 2**20, timeout, exercise)
    try:
        while True:
            left = job.deadline - time.monotonic()
            if left <= 0:
                return job.finish(hung=True)
            if select.select([job.rfd], [], [], left)[0] and job.read():
                return job.finish(hung=False)
    finally:
        if not keep:
            shutil.rmtree(where, ignore_errors=True)


def signature(o: Outcome) -> str | None:
    """What groups like outcomes: ``"other TypeError (load, schema.py:62)"``, ``"crash
    SIGSEGV"``, ``"hang"``, ``"unnamed UnicodeDecodeError (load)"``, ...; None for a clean
    error that names its file and for a harmless load."""
    if o.kind in ("other", "memory", "crash"):
        return f"{o.kind} {o.detail.split('): ')[0] + ')' if '): ' in o.detail else o.detail}"
    if o.kind == "clean":
        return None if o.named else f"unnamed {o.detail.split(': ')[0]}"
    if o.kind == "loaded":
        return None
    return o.kind


# ---- many cases -------------------------------------------------------------------------------

@dataclass
class Report:
    """Outcomes of a run: ``counts[format][kind]``; ``unnamed[format]`` (clean errors naming no
    file); ``signatures[format][sig]``: how many outcomes had each signature (see
    :func:`signature`: kind, exception type and where it was raised) and
    ``examples[format][sig]`` the first few of them."""

    counts: dict
    examples: dict
    unnamed: dict
    seconds: float
    max_examples: int = 3
    signatures: dict = field(default_factory=dict)

    def failures(self) -> dict:
        """``{format: {kind: count}}`` of the failure kinds that occurred."""
        out = {}
        for fmt, c in self.counts.items():
            bad = {k: c[k] for k in FAILURES if c.get(k)}
            if bad:
                out[fmt] = bad
        return out

    def table(self) -> str:
        cols = ("cases",) + KINDS + ("unnamed",)
        rows = [("format",) + cols]
        total = dict.fromkeys(cols, 0)
        for fmt, c in self.counts.items():
            vals = {"cases": sum(c.values()), **c, "unnamed": self.unnamed[fmt]}
            rows.append((fmt,) + tuple(str(vals.get(k, 0)) for k in cols))
            for k in cols:
                total[k] += vals.get(k, 0)
        rows.append(("all",) + tuple(str(total[k]) for k in cols))
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(s.rjust(w[i]) if i else s.ljust(w[i]) for i, s in enumerate(r))
                         for r in rows)

    def describe(self) -> str:
        """Each signature with its count and first examples (failures first)."""
        order = {k: i for i, k in enumerate(FAILURES + ("nonfinite", "unnamed"))}
        lines = []
        for fmt, sigs in self.examples.items():
            for sig in sorted(sigs, key=lambda g: (order.get(g.split()[0], 99), g)):
                lines.append(f"[{fmt}] {sig}: {self.signatures[fmt][sig]} case(s)")
                for o in sigs[sig]:
                    lines.append(f"    #{o.case.index} {o.case.desc[:120]}\n"
                                 f"        -> {o.detail[:300]}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.table()}\n\n{self.describe()}\n({self.seconds:.0f} s)"


def run(formats=FORMATS, n: int = 100, *, seed: int = 0, timeout: float = 20.0,
        mem_mb: int = 2048, jobs: int = 1, max_examples: int = 3, root=None,
        progress=None) -> Report:
    """Run ``n`` cases of each format in ``formats`` (``jobs`` children at a time).

    ``mem_mb``: address space each child may add to this process's current size.
    ``progress``: optional callable ``(n_done, n_total)``.
    """
    formats = list(formats)
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown format {f!r}; known: {', '.join(FORMATS)}")
    t0 = time.monotonic()
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="bitnet-fuzz-")) if own else Path(root)
    try:
        _fork_safe_threads()
        seeds = Seeds(root)
        _warm_up(seeds)
        counts = {f: dict.fromkeys(KINDS, 0) for f in formats}
        examples = {f: {} for f in formats}
        unnamed = dict.fromkeys(formats, 0)
        signatures = {f: {} for f in formats}
        todo = [(f, i) for i in range(n) for f in formats]
        running: dict[int, _Running] = {}
        done = 0

        def record(o: Outcome):
            nonlocal done
            f = o.case.format
            counts[f][o.kind] += 1
            unnamed[f] += o.kind == "clean" and not o.named
            sig = signature(o)
            if sig:
                signatures[f][sig] = signatures[f].get(sig, 0) + 1
                got = examples[f].setdefault(sig, [])
                if len(got) < max_examples:
                    got.append(o)
            done += 1
            if progress:
                progress(done, len(todo))

        def close(job: _Running, hung: bool):
            del running[job.rfd]
            try:
                record(job.finish(hung))
            finally:
                shutil.rmtree(job.where, ignore_errors=True)

        k = 0
        while k < len(todo) or running:
            while k < len(todo) and len(running) < max(1, jobs):
                case = make_case(*todo[k], seeds, seed)
                where = seeds.cases / f"{case.format}-{case.index}"
                path = seeds.materialize(case, where)
                job = _Running(case, path, where, mem_mb * 2**20, timeout)
                running[job.rfd] = job
                k += 1
            now = time.monotonic()
            wait = max(0.0, min(j.deadline for j in running.values()) - now)
            ready = select.select(list(running), [], [], wait)[0]
            for fd in ready:
                if running[fd].read():
                    close(running[fd], hung=False)
            now = time.monotonic()
            for job in [j for j in running.values() if j.deadline <= now]:
                close(job, hung=True)
        return Report(counts, examples, unnamed, time.monotonic() - t0, max_examples,
                      signatures)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def _fork_safe_threads() -> None:
    """Make Numba's thread pool one that survives ``fork``: GNU OpenMP aborts a forked child
    that uses it ("fork() called from a process already using GNU OpenMP"), Numba's own
    workqueue does not.  The layer is chosen at the first parallel call, so this must come
    before any; a process that already started OpenMP threads cannot fork cases."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel call yet
        numba.config.THREADING_LAYER = "workqueue"
        return
    if layer == "omp":
        raise RuntimeError("this process already runs Numba on OpenMP threads, which a forked "
                           "child cannot use; run the fuzzer in a fresh process (python -m "
                           "bitnet_edu.fuzz) or set NUMBA_THREADING_LAYER=workqueue")


def _warm_up(seeds: Seeds) -> None:
    """Load and run every seed here, so kernels are compiled before the first fork (each child
    inherits them) and a seed that does not load stops the run with a clear message."""
    targets = [seeds.tiny, seeds.default, seeds.sharded, seeds.gguf / "model.gguf"]
    for t in targets:
        res = _exercise(t)
        if res["kind"] != "loaded":
            raise RuntimeError(f"fuzz seed {t} does not load cleanly: {res}")


# ---- command line -----------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bitnet_edu.fuzz", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1200,
                   help="cases in all, split evenly over the formats (default 1200)")
    p.add_argument("--format", action="append", choices=FORMATS,
                   help="only this format (repeatable; default all)")
    p.add_argument("--seed", type=int, default=0, help="mutation seed (default 0)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per case (default 20)")
    p.add_argument("--mem", type=int, default=2048,
                   help="MB of address space a case may allocate (default 2048)")
    p.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1)")
    p.add_argument("--examples", type=int, default=3,
                   help="examples shown per outcome and format (default 3)")
    p.add_argument("--case", type=int, help="run only this case number of --format and print "
                   "its outcome (with --keep DIR the mutated model stays in DIR)")
    p.add_argument("--keep", help="with --case: directory to write the mutated model into")
    a = p.parse_args(argv)
    formats = a.format or list(FORMATS)
    if a.n < 1 or a.jobs < 1 or a.timeout <= 0 or a.mem < 64:
        p.error("--n and --jobs must be >= 1, --timeout > 0, --mem >= 64")
    if a.case is not None:
        if len(formats) != 1:
            p.error("--case needs exactly one --format")
        with tempfile.TemporaryDirectory(prefix="bitnet-fuzz-") as root:
            _fork_safe_threads()
            seeds = Seeds(root)
            _warm_up(seeds)
            case = make_case(formats[0], a.case, seeds, a.seed)
            o = run_case(case, seeds, timeout=a.timeout, mem_mb=a.mem, keep=a.keep)
            print(f"[{case.format} #{case.index}] {case.desc}\n"
                  f"must fail: {case.must_fail}\noutcome: {o.kind} ({o.seconds:.2f} s)\n"
                  f"{o.detail}\n{o.trace}")
            return 1 if o.kind in FAILURES else 0
    per = max(1, a.n // len(formats))

    def progress(done, total):
        if done % 100 == 0 or done == total:
            print(f"\r{done}/{total} cases", end="", file=sys.stderr, flush=True)

    report = run(formats, per, seed=a.seed, timeout=a.timeout, mem_mb=a.mem, jobs=a.jobs,
                 max_examples=a.examples, progress=progress)
    print(file=sys.stderr)
    print(report)
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
