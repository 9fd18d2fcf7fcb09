"""Chat templates: a checkpoint's own jinja ``chat_template``, rendered as transformers does.

An instruct model was trained on one conversation format, written down as a jinja template in
its ``tokenizer_config.json`` (or a ``chat_template.jinja`` file beside it).  Falcon3's:

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n

2B4T's is ``Role: content<|eot_id|>`` per message then ``Assistant: ``, which
:func:`builtin_2b4t` writes without jinja.  :func:`render_chat_template` renders any other
template the way ``transformers``' ``apply_chat_template`` does (``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, ``tojson``, ``raise_exception``,
``strftime_now``), in jinja2's ``ImmutableSandboxedEnvironment``: a template comes from a
downloaded file, so it must never reach Python internals (``__class__``, ``__subclasses__``)
or mutate what it is given.  Every failure (no jinja2, bad syntax, a template that raises, one
the sandbox refuses) is a ``ValueError`` with a message for the user.

jinja2 is optional (inference needs numpy, numba and tokenizers only): without it the 2B4T
templates still work (:func:`is_2b4t_template`), any other asks for ``pip install jinja2``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

__all__ = ["builtin_2b4t", "is_2b4t_template", "render_chat_template", "read_chat_tokens",
           "check_messages", "ROLES_2B4T", "TEMPLATES_2B4T", "JINJA_HINT", "MIN_JINJA"]

#: the roles the 2B4T format knows
ROLES_2B4T = ("system", "user", "assistant")
#: jinja2 releases before 3.1.6 have known sandbox escapes (transformers refuses them too)
MIN_JINJA = (3, 1, 6)
JINJA_HINT = "pip install jinja2 (or pip install 'bitnet-edu[chat]')"

_GP = "{generation_prompt}"  # where a 2B4T template writes its generation prompt literal
#: The 2B4T-format templates :func:`builtin_2b4t` writes exactly (bos aside), with the
#: generation prompt's literal as ``{generation_prompt}``: microsoft/bitnet-b1.58-2B-4T's
#: tokenizer_config.json, and the shipped small model's (bitnet_edu/default_model).
TEMPLATES_2B4T = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% set content = message['role'] | capitalize + ': ' + message['content'] | trim "
    "+ '<|eot_id|>' %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + _GP + "' }}{% endif %}",
    "{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + _GP + "' }}{% endif %}",
)
_2B4T_PATTERNS = tuple(re.compile(re.escape(t).replace(re.escape(_GP), r"[^'\\{}]*"))
                       for t in TEMPLATES_2B4T)
#: longest string or list a template may build with ``*`` (a template is a downloaded file;
#: ``'x' * 10**10`` would allocate 10 GB)
MAX_REPEAT = 1_000_000


def check_messages(messages, roles=None) -> list[dict]:
    """``messages`` as a list of dicts (a string is one user message); ValueError naming the
    first message that is not a dict with a string ``role`` (one of ``roles`` when given)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}")
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError(f"each message must be a {{'role': ..., 'content': ...}} dict, "
                             f"got {m!r:.80}")
        role = m.get("role")
        if not isinstance(role, str) or (roles is not None and role not in roles):
            want = ", ".join(roles[:-1]) + " or " + roles[-1] if roles else "a string"
            raise ValueError(f"message role must be {want}, got {role!r}")
    return list(messages)


def builtin_2b4t(messages, generation_prompt: str = "Assistant: ") -> str:
    """2B4T's format as text: ``"Role: content<|eot_id|>"`` per message (content stripped), then
    ``generation_prompt``.  No bos: it is added when the text is encoded."""
    out = [f"{m['role'].capitalize()}: {str(m.get('content', '')).strip()}<|eot_id|>"
           for m in check_messages(messages, ROLES_2B4T)]
    return "".join(out) + generation_prompt


def is_2b4t_template(template: str) -> bool:
    """True when ``template`` is one of :data:`TEMPLATES_2B4T` (any generation prompt literal):
    what :func:`builtin_2b4t` writes, so it needs no jinja2."""
    t = template.strip()
    return any(p.fullmatch(t) for p in _2B4T_PATTERNS)


def read_chat_tokens(path) -> dict:
    """The special-token strings a template may use, from ``tokenizer_config.json``:
    ``{"bos_token": "<|begin_of_text|>", "eos_token": ...}`` (the keys present; an AddedToken
    dict gives its ``content``).  Empty when the file is absent."""
    t = Path(path) / "tokenizer_config.json"
    if not t.exists():
        return {}
    try:
        cfg = json.loads(t.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{t}: not valid JSON: {str(e)[:200]}") from None
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = cfg.get(key) if isinstance(cfg, dict) else None
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            out[key] = v
    return out


def _jinja():
    """The jinja2 module (>= :data:`MIN_JINJA`), or ValueError saying how to install it."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        raise ValueError(f"this model's chat template is jinja, which needs jinja2: "
                         f"{JINJA_HINT}") from None
    version = tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < MIN_JINJA:
        raise ValueError(f"jinja2 {jinja2.__version__} has known sandbox escapes; chat templates "
                         f"need >= {'.'.join(map(str, MIN_JINJA))}: pip install -U jinja2")
    return jinja2


_ENV = None


def _environment():
    """One sandboxed environment configured as transformers' (built on first use)."""
    global _ENV
    if _ENV is not None:
        return _ENV
    jinja2 = _jinja()
    from jinja2.exceptions import SecurityError, TemplateError

    class Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def unsafe_undefined(self, obj, attribute):
            # jinja's default returns an Undefined that renders as "": refuse at once instead,
            # so a template that reaches for Python internals fails loudly
            raise SecurityError(f"access to attribute {attribute!r} of a "
                                f"{type(obj).__name__!r} object is unsafe")

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError(f"exponent {right} is too large for a chat template")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                            and len(seq) * n > MAX_REPEAT:
                        raise SecurityError(f"a chat template may not build a sequence longer "
                                            f"than {MAX_REPEAT:,} items")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # as transformers: jinja's own tojson escapes HTML characters
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    _ENV = env
    return env


def render_chat_template(template: str, messages, *, add_generation_prompt: bool = True,
                         **special_tokens) -> str:
    """``template`` rendered for ``messages`` (a list of ``{"role", "content"}`` dicts, or a
    string: one user message) as ``transformers``' ``apply_chat_template(messages,
    tokenize=False, add_generation_prompt=...)`` renders it; ``special_tokens``: ``bos_token``,
    ``eos_token``, ... strings (:func:`read_chat_tokens`).  Returns the prompt text.

    ValueError when jinja2 is missing, the template is not valid jinja, it calls
    ``raise_exception`` (e.g. on a role it does not support), or the sandbox refuses it."""
    if not isinstance(template, str):
        raise ValueError(f"a chat template must be a string, got {type(template).__name__}")
    messages = [dict(m) for m in check_messages(messages)]  # plain copies: nothing shared
    env = _environment()
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

    try:
        compiled = env.from_string(template)
    except TemplateSyntaxError as e:
        raise ValueError(f"the chat template is not valid jinja (line {e.lineno}: "
                         f"{e.message})") from None
    except SecurityError as e:  # constant folding at compile time may hit the binop limits
        raise ValueError(f"the chat template was refused by the sandbox: {e}") from None
    try:
        return compiled.render(messages=messages, add_generation_prompt=bool(add_generation_prompt),
                               **special_tokens)
    except SecurityError as e:
        raise ValueError(f"the chat template was refused by the sandbox: {e}") from None
    except TemplateError as e:  # raise_exception(...) and uses of undefined values
        raise ValueError(f"the chat template raised an error: {e}") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a method of a value that is None
        raise ValueError(f"the chat template failed while rendering: "
                         f"{type(e).__name__}: {str(e)[:200]}") from None
