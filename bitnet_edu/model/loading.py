"""``load_model``: an HF directory, a ``.gguf`` file, a hub id, or the shipped default model."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import BitNetConfig
from ..formats.gguf import iter_gguf_checkpoint
from ..formats.chat_template import read_chat_tokens
from ..formats.hf import (iter_hf_checkpoint, read_chat_template, read_generation_config,
                          read_add_bos_token, read_generation_prompt, read_pooling,
                          read_tokenizer)
from .embedding import EmbeddingModel
from .transformer import BitNetModel

__all__ = ["load_model", "HUB_ID", "GOOD_REVISION_HINT"]

HUB_ID = "microsoft/bitnet-b1.58-2B-4T"
GOOD_REVISION_HINT = ("the current main revision of the hub repos has all-zero MLP tensors in some "
                      "layers (microsoft/BitNet issue #608); pin an April-2025 revision")


def _progress_bar(desc: str, total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="layer", disable=not enabled, leave=False)


def load_model(path=None, *, revision: str | None = None, kernel: str | None = None,
               head: str = "auto", progress: bool | None = None, adapter=None):
    """Load a BitNet b1.58 model: a :class:`BitNetModel` (a decoder: ``generate``,
    ``embed``), or an :class:`~bitnet_edu.model.embedding.EmbeddingModel` for a
    BitNet-embedding directory (Qwen3 ``config.json`` with per-projection norms: ``embed``
    only, pooling from sentence-transformers' ``modules.json`` when present).

    Args:
        path: a local HF directory (packed offline checkpoint, or bf16 master weights that are
            ternarized at load with absmean), a ``.gguf`` file (I2_S), a hub id such as
            ``"microsoft/bitnet-b1.58-2B-4T"`` (downloaded with huggingface_hub), or None for
            the small model shipped in ``bitnet_edu/default_model``.
        revision: hub revision (commit hash or tag) to pin; see :data:`GOOD_REVISION_HINT`.
        kernel: ternary kernel name (``bitnet_edu.kernels.available()``; default the fastest).
        head: embedding/head storage: ``"float32"`` (exact), ``"int8"`` (4x smaller, one scale
            per row; the logits move by about 1e-2 relative) or ``"auto"`` (default: float32
            unless the float table would exceed 256 MB, as the 2B4T's 1.3 GB one does).
        progress: show a tqdm bar (default: only for models with more than 8 layers).
        adapter: a LoRA adapter to run beside the ternary weights: a PEFT adapter directory
            (``adapter_config.json`` + ``adapter_model.safetensors``) or the name of one
            shipped in ``bitnet_edu/adapters/`` (e.g. ``"chat"``); see
            :meth:`BitNetModel.load_adapter`.  Its files are read and checked before the
            model's weights, its shapes against the model after.
    """
    import bitnet_edu

    if adapter is not None:  # a wrong name or a broken file fails before a long load
        from ..formats.peft import read_peft_adapter
        from .lora import resolve_adapter
        adapter = read_peft_adapter(resolve_adapter(adapter))
    model = _load_any(path, revision, kernel, head, progress)
    if adapter is not None and isinstance(model, EmbeddingModel):
        raise ValueError("LoRA adapters run on the decoders; this is an embedding model "
                         "(BitNet-embedding): load it without adapter=")
    if adapter is not None:
        model.load_adapter(adapter)
    return model


def _load_any(path, revision, kernel, head, progress):
    import bitnet_edu

    if path is None:
        path = bitnet_edu.DEFAULT_MODEL
        if not (Path(path) / "config.json").exists():
            raise ValueError(f"the default model is not shipped yet ({path} has no config.json); "
                             "pass a path, e.g. load_model('path/to/bitnet-b1.58-2B-4T'), or use "
                             "bitnet_edu.random_model('2b4t')")
    p = Path(os.path.expanduser(str(path)))
    if p.is_file() and p.suffix == ".gguf":
        return _load_gguf(p, kernel, head, progress)
    if p.is_dir():
        return _load_hf_dir(p, kernel, head, progress)
    if p.exists():
        raise ValueError(f"{p}: not a model directory or a .gguf file")
    if str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
        return _load_hf_dir(_download(str(path), revision), kernel, head, progress)
    raise ValueError(f"{path}: no such file or directory (and not a hub id like '{HUB_ID}')")


def _auto_head(head: str, config: dict) -> str:
    if head != "auto":
        return head
    entries = int(config.get("vocab_size", 0)) * int(config.get("hidden_size", 0))
    return "float32" if 4 * entries <= 256 * 2**20 else "int8"


def _load_hf_dir(p: Path, kernel, head, progress) -> BitNetModel:
    it = iter_hf_checkpoint(p, blocks=True)
    config, _ = next(it)
    # stop ids from generation_config.json (2B4T: [128001, 128009]) override config.json's
    eos = read_generation_config(p).get("eos_token_id")
    if eos is not None:
        config = {**config, "eos_token_id": eos}
        try:
            BitNetConfig.from_dict(config)
        except ValueError as e:
            raise ValueError(f"{p / 'generation_config.json'}: {e}") from None
    prompt = read_generation_prompt(p)  # checked before the weights are read
    add_bos = read_add_bos_token(p)
    template, chat_tokens = read_chat_template(p), read_chat_tokens(p)
    model = _load(p.name, config, it, read_tokenizer(p), kernel, head, progress)
    if add_bos is not None:  # the tokenizer's own word on a leading bos (transformers')
        model.add_bos_token = add_bos
    if isinstance(model, EmbeddingModel):
        model.pooling = read_pooling(p) or model.pooling  # the model card's: last token
        return model
    if prompt is not None:
        model.generation_prompt = prompt
    # the instruct model's own chat format (chat_prompt renders it; a GGUF export writes it)
    model.chat_template, model.chat_tokens = template, chat_tokens
    return model


def _load_gguf(p: Path, kernel, head, progress) -> BitNetModel:
    it = iter_gguf_checkpoint(p, blocks=True)
    config, tokenizer = next(it)
    model = _load(p.name, config, it, tokenizer, kernel, head, progress)
    # as llama.cpp: tokenizer.ggml.add_bos_token (default true) decides whether a text prompt
    # gets bos in front; the GGUF tokenizer's post-processor adds it exactly when the flag is set
    bos = model.config.bos_token_id
    model.add_bos_token = bos is not None and tokenizer.encode("a").ids[:1] == [bos]
    return model


def _load(name: str, config: dict, tensors, tokenizer, kernel, head, progress) -> BitNetModel:
    """The one build path of every format: the stream of canonical tensors into the model,
    layer by layer, with a progress bar (default: only for models with more than 8 layers)."""
    n = int(config.get("num_hidden_layers", 0))
    show = n > 8 if progress is None else progress
    trim = _heap_trimmer()

    def layer_done(i, total):
        bar.update(1)
        trim()

    build = BitNetModel
    if BitNetConfig.from_dict(config).projection_norms:  # BitNet-embedding (checked by now)
        build = EmbeddingModel
    with _progress_bar(f"loading {name}", n, show) as bar:
        return build.from_checkpoint(config, tensors, kernel=kernel,
                                           head=_auto_head(head, config), tokenizer=tokenizer,
                                           progress=layer_done)


def _heap_trimmer():
    """A callable that hands freed heap pages back to the OS (glibc's ``malloc_trim``).

    Each layer's unpacked temporaries are freed, but glibc keeps the pages of holes between
    the packed arrays resident; trimming after each layer keeps a 2B4T load ~40 MB lower.
    A no-op where the C library has no ``malloc_trim`` (macOS, Windows, musl)."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return lambda: None
    return lambda: trim(0)


def _download(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of hub repo ``repo_id`` (huggingface_hub's cache: config, weights,
    tokenizer, chat template), or ValueError in one paragraph saying how to get it by hand."""
    name = repo_id.split("/")[-1]
    # the all-zero-MLP revisions are 2B4T's (microsoft/BitNet issue #608), not other members'
    note = f"  Note: {GOOD_REVISION_HINT}." if repo_id.startswith("microsoft/") else ""
    manual = (f"download it by hand on a machine with internet access:\n"
              f"    huggingface-cli download {repo_id} --revision {revision or '<commit>'} "
              f"--local-dir ./{name}\n"
              f"then call load_model('./{name}') (bitnet-edu ... --model ./{name}).{note}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{repo_id!r} looks like a hub id, and downloading needs huggingface_hub "
                         f"(pip install 'bitnet-edu[hub]'); or {manual}") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.jinja"]))
    except Exception as e:  # noqa: BLE001 - offline, no such repo, gated, disk full, ...
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise ValueError(f"could not download {repo_id!r} (offline? {type(e).__name__}: "
                         f"{detail}); {manual}") from None
