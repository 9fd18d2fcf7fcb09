"""Fine-tuning data made offline: a new text domain, and a chat question/answer set.

**Python standard-library docstrings** (:func:`stdlib_docs`).  A domain far from the KJV that is
installed wherever Python is: the docstrings of a fixed list of pure-library modules, collected
with ``inspect`` (module, then each public class / function defined there and each public method
a class defines itself, sorted by name).  License: the Python Software Foundation License
(CPython's documentation and source).  Deterministic for a given Python version (the docstrings
change between releases; :func:`stdlib_docs_info` reports the version and a checksum).  Split by
*module*: every fifth module of :data:`STDLIB_MODULES` is held out, so held-out text is about
APIs the adapter never read.

**KJV chat set** (:func:`kjv_chat_items`).  Questions made from the corpus itself:

* ``son_of`` / ``begat`` / ``father``: "Who was the father of Y?" -> "X" where the corpus writes
  "Y the son of X" (forward), "Whom did X beget?" -> "Y" from "X begat Y" (forward), "Who was
  the father of Y?" where the corpus only writes "X begat Y" (reverse); names fathered by more
  than one X in the text are left out, as ambiguous;
* ``passage``: the verse that states a genealogy fact, then the question (open book);
* ``verse``: "Finish the verse: <verse up to its last clause>" -> that clause (2-8 words);
* ``verse_end``: "Finish the verse: <verse without its last word>" -> that word: a verse of
  40-200 characters whose last word is alphabetic and follows another word (not a punctuation
  mark, so the prompt never looks like a ``verse`` one, which ends at ``,`` ``;`` ``:``).  One
  word because that is what the base knows: continuing the verse in plain text it gets the
  last word right on ~16% of held-out verses, the last two words on ~10%.

Each item becomes the 2B4T chat template that :func:`bitnet_edu.model.generation.chat_prompt`
writes, ``"User: <question><|eot_id|>Assistant: "``, followed by the answer and the end-of-turn
token.  The shipped tokenizer has no ``<|eot_id|>`` token (its only special token is
``<|endoftext|>``, id 0, the model's bos and eos): the template's ``<|eot_id|>`` text is encoded
as ordinary byte-level pieces, and an answer ends with ``<|endoftext|>``, which the engine's
``generate``/``chat`` already stops on (it is ``eos_token_id``).  Items are split train/held-out
by a hash of the fact (one in five held out: genealogies by father>son pair, the two verse
kinds by the verse, so a verse's clause and its last word fall on the same side); the held-out
questions are about verses the
base model read in pre-training or not, in the same proportion as the KJV split (every 20th
chapter held out there).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import warnings
from functools import lru_cache

from .data import VAL_EVERY, load_chapters

__all__ = ["STDLIB_MODULES", "stdlib_docs", "stdlib_docs_info", "module_doc", "kjv_chat_items",
           "chat_text", "answer_text", "default_generation_prompt", "CHAT_EOT", "CHAT_KINDS",
           "VERSE_KINDS", "HELD_OUT_EVERY"]

#: Pure-Python stdlib modules with substantial docstrings and no import side effects.
STDLIB_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "collections", "colorsys",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "difflib", "dis",
    "email.message", "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "graphlib", "gzip", "heapq", "hmac", "html.parser", "http.client",
    "imaplib", "inspect", "ipaddress", "json", "logging", "mailbox", "mimetypes", "netrc",
    "numbers", "opcode", "optparse", "pathlib", "pickle", "pkgutil", "platform", "poplib",
    "pprint", "pydoc", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shlex", "shutil", "smtplib", "socketserver", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "types", "typing", "unittest.case", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "zipfile", "zoneinfo",
)
HELD_OUT_EVERY = 5  # module i (and chat item with hash % 5 == 0) is held out when i % 5 == 4
CHAT_EOT = "<|endoftext|>"  # the shipped tokenizer's only special token: end of turn here


def _doc(obj) -> str | None:
    d = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    # own docstring only, not inherited; a few show a repr with an address
    return _ADDRESS.sub("", inspect.cleandoc(d)) if d and d.strip() else None


class _Elided:
    def __repr__(self):
        return "..."


_LITERALS = (type(None), bool, int, float, complex, str, bytes)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _literal(v) -> bool:
    if isinstance(v, tuple):
        return all(_literal(x) for x in v)
    return type(v) in _LITERALS


def _signature(obj) -> str:
    """``(params)`` with non-literal defaults shown as ``...``: their reprs hold memory
    addresses or live process state (``logging.shutdown``'s handler list), which would make the
    text differ from run to run."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p if p.default is p.empty or _literal(p.default) else p.replace(default=_Elided())
              for p in sig.parameters.values()]
    return _ADDRESS.sub("", str(sig.replace(parameters=params)))


def module_doc(name: str) -> str:
    """One module's docstrings as one document (``""`` if it cannot be imported).

    Layout: the module docstring, then ``name(signature)`` + docstring for every public
    function and class *defined in* the module (sorted), then ``Class.method(signature)`` +
    docstring for the public methods a class defines itself.
    """
    with warnings.catch_warnings():  # typing.io & co. warn when touched
        warnings.simplefilter("ignore", DeprecationWarning)
        return _module_doc(name)


def _module_doc(name: str) -> str:
    try:
        mod = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a module missing from this Python: leave it out
        return ""
    parts = [f"Module {name}\n\n{_doc(mod) or ''}".rstrip()]
    for attr in sorted(vars(mod)):
        obj = vars(mod)[attr]
        if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        d = _doc(obj)
        if d:
            sig = "" if inspect.isclass(obj) else _signature(obj)
            parts.append(f"{attr}{sig}\n{d}")
        if inspect.isclass(obj):
            for meth in sorted(vars(obj)):
                f = vars(obj)[meth]
                if meth.startswith("_") or not inspect.isfunction(f):
                    continue
                d = _doc(f)
                if d:
                    parts.append(f"{attr}.{meth}{_signature(f)}\n{d}")
    return "\n\n".join(parts) + "\n"


@lru_cache(maxsize=1)
def _all_docs() -> tuple[tuple[str, str], ...]:
    return tuple((n, module_doc(n)) for n in STDLIB_MODULES)


def stdlib_docs(split: str, max_chars: int | None = None) -> list[str]:
    """Documents (one per module) of ``split``: ``"train"`` or ``"val"`` (every fifth module).

    ``max_chars``: keep whole documents, in order, until about that many characters (the last
    one cut to fit), for quick runs."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    docs = [d for i, (_, d) in enumerate(_all_docs())
            if d and (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == (split == "val")]
    if max_chars is not None:
        out, n = [], 0
        for d in docs:
            if n >= max_chars:
                break
            out.append(d[: max_chars - n])
            n += len(out[-1])
        docs = out
    return docs


def stdlib_docs_info() -> dict:
    """Python version, modules and characters per split, and a sha256 of all the text."""
    docs = _all_docs()
    h = hashlib.sha256("".join(d for _, d in docs).encode()).hexdigest()
    val = [n for i, (n, _) in enumerate(docs) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return {"python": sys.version.split()[0], "modules": len([1 for _, d in docs if d]),
            "held_out_modules": val,
            "train_chars": sum(len(d) for d in stdlib_docs("train")),
            "val_chars": sum(len(d) for d in stdlib_docs("val")), "sha256": h,
            "license": "Python Software Foundation License"}


# --- the KJV chat set ---------------------------------------------------------------------------

# lookaheads: overlapping matches, so a chain "Zadok the son of Ahitub the son of Amariah" gives both
_BEGAT = re.compile(r"(?=\b([A-Z][a-z]+) begat ([A-Z][a-z]+)\b)")
_SON_OF = re.compile(r"(?=\b([A-Z][a-z]+) the son of ([A-Z][a-z]+)\b)")
_NOT_NAMES = {"And", "Which", "Who", "He", "They", "Then", "That", "Thou", "Ye", "I", "It",
              "This", "These", "Also", "But", "For", "So", "Now", "When", "God", "Lord", "Son",
              "Of", "The", "Is", "Art", "Was", "Even", "Behold", "Let", "Saith"}
#: The kinds of :func:`kjv_chat_items`, in the order tables list them.
CHAT_KINDS = ("son_of", "begat", "father", "passage", "verse", "verse_end")
#: the kinds made from verses (thinned by ``verse_every``: there are many more verses than facts)
VERSE_KINDS = ("verse", "verse_end")
#: a ``verse_end`` verse: (all but the last word, ending in a letter) (the last word) (its stop)
_VERSE_END = re.compile(r"(.*[A-Za-z]) ([A-Za-z]+)[.?!;:,]*")
#: a ``verse`` item's answer: the verse's last clause, this many words at most (and 2 at least)
VERSE_ANSWER_WORDS = (2, 8)


def _held_out(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def _pairs(chapters, pattern, swap: bool):
    """``{(father, son): [chapter indices of each occurrence]}`` of ``pattern`` in the corpus."""
    out: dict[tuple, list] = {}
    for ci, ch in enumerate(chapters):
        for a, b in pattern.findall(ch):
            if a in _NOT_NAMES or b in _NOT_NAMES:
                continue
            out.setdefault((b, a) if swap else (a, b), []).append(ci)
    return out


@lru_cache(maxsize=1)
def _chat_items() -> tuple[dict, ...]:
    chapters = load_chapters()
    begat = _pairs(chapters, _BEGAT, swap=False)     # "X begat Y": (X, Y)
    son_of = _pairs(chapters, _SON_OF, swap=True)    # "Y the son of X": (X, Y)
    fathers_of: dict[str, set] = {}
    for x, y in list(begat) + list(son_of):
        fathers_of.setdefault(y, set()).add(x)
    sons_of: dict[str, set] = {}
    for x, y in begat:
        sons_of.setdefault(x, set()).add(y)
    items = []

    def add(kind, question, answer, occ, key, plain):
        items.append({"kind": kind, "question": question, "answer": answer, "plain": plain,
                      "chapter": occ[0], "mentions": len(occ), "fact": key,
                      "seen_in_pretraining": any(c % VAL_EVERY != VAL_EVERY - 1 for c in occ)})

    # "Who was the father of Y?": forward when the corpus writes "Y the son of X" (the son's
    # name comes first, as in the question), reverse when it only writes "X begat Y"
    for y in sorted(fathers_of):
        if len(fathers_of[y]) != 1:
            continue  # two men of that name with different fathers: ambiguous
        x = next(iter(fathers_of[y]))
        q = f"Who was the father of {y}?"
        if (x, y) in son_of:
            add("son_of", q, x, son_of[(x, y)], f"{x}>{y}", f"And {y} the son of")
        else:
            add("father", q, x, begat[(x, y)], f"{x}>{y}", f"And {y} the son of")
    # open book: the verse that states the fact, then the question (answerable by reading)
    first_verse = {}
    for ci, ch in enumerate(chapters):
        for verse in ch.split("\n"):
            if len(verse) <= 160:
                for pat, swap in ((_BEGAT, False), (_SON_OF, True)):
                    for a, b in pat.findall(verse):
                        first_verse.setdefault((b, a) if swap else (a, b), (verse, ci))
    for y in sorted(fathers_of):
        x = next(iter(fathers_of[y]))
        if len(fathers_of[y]) == 1 and (x, y) in first_verse:
            verse, ci = first_verse[(x, y)]
            occ = son_of.get((x, y), []) + begat.get((x, y), [])
            add("passage", f"{verse} Who was the father of {y}?", x, occ, f"{x}>{y}",
                f"{verse}\nAnd {y} the son of")
    # "Whom did X beget?": the forward question of "X begat Y" (fathers with one son there)
    for x in sorted(sons_of):
        if len(sons_of[x]) == 1:
            y = next(iter(sons_of[x]))
            add("begat", f"Whom did {x} beget?", y, begat[(x, y)], f"{x}>{y}", f"And {x} begat")
    lo, hi = VERSE_ANSWER_WORDS
    seen = set()
    for ci, ch in enumerate(chapters):
        for verse in ch.split("\n"):
            if not 40 <= len(verse) <= 200:
                continue
            cuts = [m.end() for m in re.finditer(r"[;:,] ", verse)]
            if not cuts:
                continue
            first, last = verse[:cuts[-1]].strip(), verse[cuts[-1]:].strip().rstrip(".?!")
            if len(first) < 20 or not lo <= len(last.split()) <= hi or not re.fullmatch(
                    r"[A-Za-z' ]+", last) or first in seen:
                continue  # the KJV repeats formulas: one answer per first part
            seen.add(first)
            add("verse", f"Finish the verse: {first}", last, [ci], f"verse:{verse}", first)
    seen = set()
    for ci, ch in enumerate(chapters):
        for verse in ch.split("\n"):
            m = _VERSE_END.fullmatch(verse)
            if not 40 <= len(verse) <= 200 or not m or m[1] in seen:
                continue  # one answer per first part, as above
            seen.add(m[1])
            add("verse_end", f"Finish the verse: {m[1]}", m[2], [ci], f"verse:{verse}", m[1])
    for it in items:
        # genealogies split by the fact (father>son), so a question and its reverse share a side
        it["split"] = "val" if _held_out(it["fact"]) else "train"
    return tuple(items)


def kjv_chat_items(split: str, kinds=CHAT_KINDS, max_items: int | None = None,
                   verse_every: int = 1) -> list[dict]:
    """Question/answer dicts ``{"kind", "question", "answer", "plain", "chapter", "mentions",
    "fact", "split", "seen_in_pretraining"}`` of ``split`` ("train" or "val"), in the order of
    :data:`CHAT_KINDS` then the corpus.  ``plain``: the corpus phrase that precedes the answer
    (``"Joshua the son of"``), for the plain-text probe; ``chapter``: the first chapter the fact
    is in; ``mentions``: how many times the corpus states it; ``fact``: what the split hashes
    (``"Nun>Joshua"``, ``"verse:<the whole verse>"``); ``seen_in_pretraining``: stated at least once
    in a pre-training chapter (not every 20th).

    ``verse_every``: keep every n-th item of each of :data:`VERSE_KINDS` (there are many more
    verses than genealogies); ``max_items``: an evenly spaced subset of at most that many."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    out, k = [], dict.fromkeys(VERSE_KINDS, 0)
    for it in _chat_items():
        if it["split"] != split or it["kind"] not in kinds:
            continue
        if it["kind"] in k:
            k[it["kind"]] += 1
            if (k[it["kind"]] - 1) % verse_every:
                continue
        out.append(dict(it))
    if max_items is not None and len(out) > max_items:
        step = len(out) / max_items
        out = [out[int(i * step)] for i in range(max_items)]
    return out


def default_generation_prompt() -> str:
    """The shipped model's generation prompt (``"Assistant:"``, from its tokenizer_config.json)."""
    from ..formats.hf import read_generation_prompt
    from .import_hf import default_model_dir

    return read_generation_prompt(default_model_dir()) or "Assistant: "


def answer_text(answer: str, generation_prompt: str) -> str:
    """The assistant turn's text after the generation prompt: ``" " + answer + CHAT_EOT``, or
    without the space when the generation prompt already ends in one (2B4T's ``"Assistant: "``).
    """
    sep = "" if generation_prompt[-1:].isspace() else " "
    return sep + answer + CHAT_EOT


def chat_text(question: str, answer: str | None = None,
              generation_prompt: str | None = None) -> str:
    """The chat template for one user turn as the engine writes it (``chat_prompt``'s text with
    the model's ``generation_prompt``, default the shipped model's ``"Assistant:"``), plus
    :func:`answer_text` if an answer is given:
    ``"User: q<|eot_id|>Assistant: a<|endoftext|>"``."""
    from types import SimpleNamespace

    from ..model.generation import chat_prompt

    gp = default_generation_prompt() if generation_prompt is None else generation_prompt
    prompt = chat_prompt(SimpleNamespace(generation_prompt=gp),
                         [{"role": "user", "content": question}])
    return prompt if answer is None else prompt + answer_text(answer, gp)
