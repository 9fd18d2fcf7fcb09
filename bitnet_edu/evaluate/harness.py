"""The ``bitnet_edu`` model for lm-evaluation-harness (``pip install 'bitnet-edu[eval]'``).

Importing this module registers :class:`BitNetEduLM` under the names ``bitnet_edu`` and
``bitnet-edu`` in lm-eval's model registry.  lm-eval 0.4 finds models only in its own registry
(it has no plugin entry point for them), so the command line goes through a wrapper that
imports this module first and then runs lm-eval's own CLI unchanged::

    python -m bitnet_edu.evaluate lm-eval run --model bitnet_edu \\
        --model_args pretrained=PATH,head=int8 --tasks bitnet_edu_next_verse

(the wrapper adds ``--include_path`` for the offline tasks shipped here).  From Python,
``simple_evaluate(model=BitNetEduLM(...), tasks=[...])`` or :func:`evaluate_tasks`.

lm-eval tokenizes (``TemplateLM._encode_pair``) and hands us token ids; scoring goes through
:func:`~bitnet_edu.evaluate.scoring.score_continuations`, requests with the same context
grouped so that its KV cache is computed once.
"""

from __future__ import annotations

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError("the lm-eval backend needs lm-evaluation-harness: "
                      "pip install 'bitnet-edu[eval]'  (or: pip install lm_eval==0.4.13)") from e

from tqdm.auto import tqdm

from .offline import TASK_DIR
from .scoring import as_scorer, rolling_loglikelihood, score_continuations

__all__ = ["BitNetEduLM", "evaluate_tasks", "task_manager"]


@register_model("bitnet_edu", "bitnet-edu")
class BitNetEduLM(TemplateLM):
    """lm-eval's view of a bitnet_edu engine model.

    Args (``--model_args key=value,...``): ``pretrained`` (a model directory or ``.gguf``;
    default the shipped model) or ``model`` (an already loaded ``BitNetModel``, from Python);
    ``head`` (``auto``/``float32``/``int8``/``int4``), ``kernel``, ``threads``.  lm-eval's
    ``batch_size``/``device`` are accepted and ignored (one CPU process; the engine batches
    inside each forward).
    """

    def __init__(self, pretrained=None, model=None, head: str = "auto", kernel=None,
                 threads=None, batch_size=None, max_batch_size=None, device=None, **kwargs):
        super().__init__()
        unknown = set(kwargs) - {"trust_remote_code", "dtype", "revision"}
        if unknown:
            raise ValueError(f"bitnet_edu model: unknown model_args {sorted(unknown)}; known: "
                             "pretrained, head, kernel, threads")
        if model is None:
            from ..model import load_model

            model = load_model(pretrained, head=head, kernel=kernel, progress=False)
        if threads not in (None, "", "auto"):
            model.threads = int(threads)
        self.model = model
        self.scorer = as_scorer(model)
        self.tokenizer = model.tokenizer

    # --- what TemplateLM needs --------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.model.config.eos_ids[0])

    @property
    def prefix_token_id(self) -> int:
        return self.scorer.prefix

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def tokenizer_name(self) -> str:
        return "bitnet_edu"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        """Token ids of ``string``, after the prefix token unless ``add_special_tokens`` is
        False (lm-eval asks for that when it adds the prefix itself)."""
        ids = list(self.tokenizer.encode(string, add_special_tokens=False).ids)
        return ids if add_special_tokens is False else [self.prefix_token_id] + ids

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        out = [None] * len(requests)
        groups = {}
        for i, (_, ctx, cont) in enumerate(requests):
            groups.setdefault(tuple(ctx), []).append(i)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="bitnet_edu loglikelihood")
        for ctx, idx in groups.items():
            scores = score_continuations(self.scorer, list(ctx), [requests[i][2] for i in idx])
            for i, sc in zip(idx, scores):
                out[i] = sc
                self.cache_hook.add_partial("loglikelihood", requests[i][0], sc)
            bar.update(len(idx))
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="bitnet_edu rolling"):
            (text,) = req.args
            lp = rolling_loglikelihood(self.scorer, text)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), lp)
            out.append(lp)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False):
        """Greedy (or sampled, with ``do_sample``/``temperature``) continuations, cut at the
        first of the request's ``until`` strings; ``max_gen_toks`` default 256, fewer when the
        context leaves less room."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="bitnet_edu generate"):
            context, gen = req.args
            gen = dict(gen or {})
            until = gen.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen.pop("max_gen_toks", 256))
            temperature = float(gen.pop("temperature", 0.0)) if gen.pop("do_sample", False) else 0.0
            ids = [self.prefix_token_id] + list(
                self.tokenizer.encode(context, add_special_tokens=False).ids)
            max_new = max(1, min(max_new, self.max_length - 1))
            ids = ids[-(self.max_length - max_new):]  # room for the answer, as lm-eval's HF model
            new = self.model.generate(ids, max_new, temperature=temperature,
                                      seed=0 if temperature else None)
            text = self.tok_decode(new)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out


def task_manager(extra_paths=()):
    """lm-eval's ``TaskManager`` that also knows the offline tasks shipped here."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASK_DIR)] + [str(p) for p in extra_paths]
    return TaskManager(include_path=paths if len(paths) > 1 else paths[0])


def evaluate_tasks(model, tasks, *, limit=None, **kwargs) -> dict:
    """Run lm-eval's ``simple_evaluate`` on an engine ``model`` (or a path): returns its
    ``results`` dict, ``{task: {"acc,none": ..., "acc_stderr,none": ..., ...}}``."""
    from lm_eval import simple_evaluate

    lm = model if isinstance(model, BitNetEduLM) else (
        BitNetEduLM(pretrained=model) if model is None or isinstance(model, str)
        else BitNetEduLM(model=model))
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    res = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=task_manager(),
                          log_samples=False, **kwargs)
    return res["results"]
