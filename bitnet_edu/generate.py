"""Text generation (sampling rules, the prefill/decode loop, streaming, chat).

The code lives in :mod:`bitnet_edu.model.generation`, beside the model it drives (the model's
``generate``/``stream``/``chat`` methods call it); this module keeps the public import path
``bitnet_edu.generate``.
"""

from .model.generation import (CHAT_STOP, apply_repetition_penalty, chat_prompt,  # noqa: F401
                               generate, generate_ids, sample_next, stream, top_k_filter,
                               top_p_filter)
from .model.generation import __all__  # noqa: F401
