"""Evaluation: how a benchmark score is made, on this engine.

* :mod:`.scoring` -- log-likelihood of a continuation, multiple-choice ``acc``/``acc_norm``,
  rolling perplexity and bits per character, with lm-evaluation-harness's exact rules; the
  engine reuses a context's KV cache across the choices.
* :mod:`.offline` -- small tasks built from the held-out chapters of the training corpus
  (next verse, cloze, held-out bits/char), shipped as lm-eval task YAML + JSON, and a runner
  that needs no lm-eval.
* :mod:`.harness` -- the ``bitnet_edu`` model for lm-eval (``pip install 'bitnet-edu[eval]'``),
  and ``python -m bitnet_edu.evaluate`` (see ``--help``).

(Named ``evaluate``, never ``eval``: that is a builtin.)
"""

from .scoring import (MultipleChoice, as_scorer, count_words, encode_pair,  # noqa: F401
                      log_softmax_rows, loglikelihood, loglikelihood_tokens, multiple_choice,
                      perplexity, rolling_loglikelihood, rolling_windows, score_continuations)

__all__ = ["loglikelihood", "loglikelihood_tokens", "multiple_choice", "MultipleChoice",
           "perplexity", "rolling_loglikelihood", "rolling_windows", "score_continuations",
           "encode_pair", "as_scorer", "log_softmax_rows", "count_words"]
