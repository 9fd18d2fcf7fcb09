"""Stage 5: train a small BitNet b1.58 from scratch with quantization-aware training (QAT).

Modules, in reading order: ``data`` (the KJV corpus) · ``bpe`` (byte-level BPE) · ``model``
(the 2B4T architecture, scaled down) · ``loop`` (AdamW + the two-stage b1.58 schedule) ·
``ptq`` (post-training quantization, for comparison) · ``export_hf`` (HF packed format) ·
``recipe`` (named configs, end to end).  Needs torch.
"""

from .bpe import EOT, train_bpe  # noqa: F401
from .data import encode_texts, get_batch, split_texts  # noqa: F401
from .export_hf import export_hf, hf_state_dict  # noqa: F401
from .loop import TrainConfig, evaluate, lr_at, train, train_step, weight_decay_at  # noqa: F401
from .model import BitNetLM, ModelConfig  # noqa: F401
from .ptq import compare_ptq_qat, post_training_quantize, ternary_codes, zero_fraction  # noqa: F401
from .recipe import CONFIGS, perplexity, prepare_data, run, sample  # noqa: F401
