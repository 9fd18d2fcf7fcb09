"""BitNet-embedding (microsoft/bitnet-embedding-0.6b) against references, on tiny checkpoints.

The published model (docs/family.md, 2d; bitnet.cpp ``docs/bitnet-embeddings-i2s-guide.md``):
Qwen3's block (q_norm / k_norm per head, SwiGLU, tied table), every projection with its own
input RMSNorm (``<proj>.norm.weight``) before the per-token int8 activation quantization,
float master weights quantized at load (absmean ternary per tensor), tensor names with or
without the ``model.`` prefix; one vector per text: the final-normed state of an appended
``<|endoftext|>``, L2-normalized; pooling named in sentence-transformers' ``modules.json`` /
``1_Pooling/config.json``.  The hub is unreachable here, so each test writes a tiny checkpoint
in that layout.

Oracles: :func:`reference_hidden`, a float32 torch forward written from that description, and a
second, independent one: transformers' own ``Qwen3Model`` with a ``quant_method: bitnet``
config (``autobitlinear``, online quantization, ``use_rms_norm``: the same "BitLinear with LN"
maths, the norm then named ``<proj>.rms_norm.weight``).  Tolerance as tests/test_family.py: a
float32 summation order may flip an int8 activation code at an exact .5, so the median error
is below 1e-5 of the range and the worst below 1e-2 of it; the embeddings' cosine to the
reference above 0.9999.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from bitnet_edu.config import EMBEDDING_MEMBERS, PRESETS, BitNetConfig
from tiny_checkpoint import tiny_tokenizer

# Odd on purpose: head_dim 24 is not hidden / heads (= 16), as in the real model (128 != 64)
SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=24)
EOS = 1  # <|end_of_text|> of the tiny tokenizer plays <|endoftext|>
IDS = [5, 17, 230, 42, 99, 3, 150, 7, 64, 201, 11, 8]
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# two on-disk layouts: the one bitnet.cpp's converter reads (no model. prefix, <proj>.norm,
# float16) and transformers' use_rms_norm names (model. prefix, <proj>.rms_norm, float32)
LAYOUTS = {"converter": dict(prefix="", norm="norm", dtype=np.float16),
           "transformers": dict(prefix="model.", norm="rms_norm", dtype=np.float32)}


def hub_config(**over) -> dict:
    """A Qwen3 config.json of the keys the real one has, at a tiny shape."""
    return {"architectures": ["Qwen3Model"], "model_type": "qwen3", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": EOS, "eos_token_id": EOS,
            "hidden_act": "silu", "max_position_embeddings": 64, "max_window_layers": 28,
            "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
            "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": True,
            "torch_dtype": "float32", "use_cache": True, **SHAPE, **over}


def master_tensors(config: dict, seed: int, layout: str) -> dict[str, np.ndarray]:
    """Float master weights under the layout's names."""
    lay = LAYOUTS[layout]
    h, f, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    d, heads, kv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    rng = np.random.default_rng(seed)

    def lin(o, i):
        return rng.uniform(0.15, 0.4) * rng.standard_normal((o, i))

    def norm(size):
        return 1.0 + 0.2 * rng.standard_normal(size)

    shapes = {"self_attn.q_proj": (heads * d, h), "self_attn.k_proj": (kv * d, h),
              "self_attn.v_proj": (kv * d, h), "self_attn.o_proj": (h, heads * d),
              "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    pre = lay["prefix"]
    t = {pre + "embed_tokens.weight": rng.standard_normal((config["vocab_size"], h)),
         pre + "norm.weight": norm(h)}
    for i in range(n):
        p = f"{pre}layers.{i}."
        t[p + "input_layernorm.weight"] = norm(h)
        t[p + "post_attention_layernorm.weight"] = norm(h)
        t[p + "self_attn.q_norm.weight"] = norm(d)
        t[p + "self_attn.k_norm.weight"] = norm(d)
        for name, (o, i_) in shapes.items():
            t[p + name + ".weight"] = lin(o, i_)
            t[p + name + "." + lay["norm"] + ".weight"] = norm(i_)
    return {k: np.ascontiguousarray(a, lay["dtype"]) for k, a in t.items()}


def write_embedding_checkpoint(directory, layout="converter", *, seed=0, pooling="lasttoken",
                               config_overrides=None, drop=(), tokenizer=True) -> Path:
    from safetensors.numpy import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    config = hub_config(**(config_overrides or {}))
    t = master_tensors(config, seed, layout)
    for name in drop:
        del t[name]
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer:
        tiny_tokenizer(config["vocab_size"]).save(str(d / "tokenizer.json"))
    if pooling is not None:
        (d / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"}]))
        (d / "1_Pooling").mkdir(exist_ok=True)
        flags = {f"pooling_mode_{m}": m == pooling for m in
                 ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")}
        (d / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": config["hidden_size"], **flags}))
    return d


# --- oracle 1: the published description, float32 torch ------------------------------------

def reference_hidden(directory, ids, layout="converter") -> np.ndarray:
    """float32 ``[len(ids), hidden]``, the final-normed states.  Per layer: ``a =
    input_layernorm(x)``; each projection ``F.linear(act_quant(rms(in, <proj>.norm)),
    weight_quant(W))`` (absmean ternary per tensor, ``1/mean|W|`` clamped at 1e-5; per-token
    absmax int8); q and k RMS-normed per head (q_norm, k_norm) then RoPE (rotate-half, theta
    from the config); causal GQA; ``x += o``; ``b = post_attention_layernorm(x)``; ``x +=
    down(silu(gate(b)) * up(b))``; then ``norm``."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    lay = LAYOUTS[layout]
    c = json.loads((Path(directory) / "config.json").read_text())
    pre = lay["prefix"]
    t = {k[len(pre):]: v.float()
         for k, v in load_file(str(Path(directory) / "model.safetensors")).items()}
    eps, heads, kv, d = (c["rms_norm_eps"], c["num_attention_heads"], c["num_key_value_heads"],
                         c["head_dim"])

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def weight_quant(w):
        s = 1.0 / w.abs().mean().clamp(min=1e-5)
        return (w * s).round().clamp(-1, 1) / s

    def act_quant(x):
        s = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        return (x * s).round().clamp(-128, 127) / s

    def bitlinear(x, name):
        xn = rms(x, t[f"{name}.{lay['norm']}.weight"])
        return F.linear(act_quant(xn), weight_quant(t[name + ".weight"]))

    def rotate_half(x):
        return torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)

    n = len(ids)
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
    emb = torch.cat([torch.arange(n).float()[:, None] * inv_freq[None, :]] * 2, dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    with torch.no_grad():
        x = t["embed_tokens.weight"][torch.tensor(ids)]
        for i in range(c["num_hidden_layers"]):
            p = f"layers.{i}."
            a = rms(x, t[p + "input_layernorm.weight"])
            q = rms(bitlinear(a, p + "self_attn.q_proj").view(n, heads, d),
                    t[p + "self_attn.q_norm.weight"])
            k = rms(bitlinear(a, p + "self_attn.k_proj").view(n, kv, d),
                    t[p + "self_attn.k_norm.weight"])
            v = bitlinear(a, p + "self_attn.v_proj").view(n, kv, d)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
            scores = torch.einsum("thd,shd->hts", q, k) / d ** 0.5 + mask
            att = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(n, heads * d)
            x = x + bitlinear(att, p + "self_attn.o_proj")
            b = rms(x, t[p + "post_attention_layernorm.weight"])
            g = F.silu(bitlinear(b, p + "mlp.gate_proj")) * bitlinear(b, p + "mlp.up_proj")
            x = x + bitlinear(g, p + "mlp.down_proj")
        return rms(x, t["norm.weight"]).numpy()


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def assert_close(got, ref):
    err, scale = np.abs(got - ref), np.abs(ref).max()
    assert np.median(err) < 1e-5 * scale and err.max() < 1e-2 * scale, \
        (float(np.median(err) / scale), float(err.max() / scale))


@pytest.fixture(scope="module")
def torch_oracle():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module", params=list(LAYOUTS))
def member(request, tmp_path_factory, torch_oracle):
    from bitnet_edu import load_model
    d = write_embedding_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt",
                                   request.param, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean checkpoint loads without a warning
        model = load_model(d, head="float32")
    return dict(layout=request.param, dir=d, model=model)


# --- against the references ------------------------------------------------------------------

def test_hidden_states_match_the_reference(member):
    from bitnet_edu.model.embedding import EmbeddingModel
    model = member["model"]
    assert isinstance(model, EmbeddingModel) and model.pooling == "last"
    cfg = model.config
    assert (cfg.projection_norms, cfg.qk_norm, cfg.sub_norms, cfg.hidden_act) == \
        (True, True, False, "silu")
    assert cfg.bos_token_id is None  # Qwen3 puts nothing in front (its bos is the eos)
    got = model.hidden_states(IDS)
    assert got.dtype == np.float32 and got.shape == (len(IDS), cfg.hidden_size)
    assert_close(got, reference_hidden(member["dir"], IDS, member["layout"]))


def test_embed_is_the_l2_normalized_state_of_an_appended_eos(member):
    model, d = member["model"], member["dir"]
    texts = ["BitNet stores every weight as -1, 0 or +1.", "The quick brown fox.", "Hello"]
    got = model.embed(texts)
    assert got.shape == (3, model.config.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    for text, e in zip(texts, got):
        ids = model.tokenizer.encode(text).ids + [EOS]
        ref = unit(reference_hidden(d, ids, member["layout"])[-1])
        assert float(e @ ref) > 0.9999
    one = model.embed(texts[1])  # a single string: one vector, the same
    assert one.shape == (model.config.hidden_size,) and np.allclose(one, got[1], atol=1e-6)
    # the eos matters: without it the vector is another one
    no_eos = unit(reference_hidden(d, model.tokenizer.encode(texts[0]).ids, member["layout"])[-1])
    assert float(got[0] @ no_eos) < 0.999


def test_mean_pooling_and_no_normalisation(member):
    model, d = member["model"], member["dir"]
    ids = IDS + [EOS]
    ref = reference_hidden(d, ids, member["layout"])
    mean = model.embed([ids], pooling="mean")[0]
    assert float(mean @ unit(ref.mean(0))) > 0.9999
    raw = model.embed([ids], normalize=False)[0]
    assert_close(raw, ref[-1])


def test_fast_and_reference_paths_agree(member):
    model = member["model"]
    fast = model.hidden_states(IDS)
    model.fast = False
    try:
        ref = model.hidden_states(IDS)
        tr = []
        model.hidden_states(IDS[:4], trace=tr)
    finally:
        model.fast = True
    assert_close(fast, ref)
    assert len(tr) == model.config.num_hidden_layers
    # the head norms are applied: q is not the bare projection output
    assert np.allclose(np.sqrt((tr[0]["q"] ** 2).mean(-1)).mean(), 1, atol=0.5)


def test_transformers_qwen3_with_bitnet_rms_norm_linears_agrees(tmp_path, torch_oracle):
    """Oracle 2: transformers' Qwen3Model, its linears replaced by AutoBitLinear (online
    quantization, use_rms_norm) through a quant_method: bitnet config, on the transformers
    layout; the engine loads the same directory (the quantization config is read as the
    online master layout)."""
    transformers = pytest.importorskip("transformers")
    import torch
    from bitnet_edu import load_model
    qc = {"quant_method": "bitnet", "linear_class": "autobitlinear",
          "quantization_mode": "online", "use_rms_norm": True, "rms_norm_eps": 1e-6}
    d = write_embedding_checkpoint(tmp_path / "tf", "transformers", seed=5,
                                   config_overrides={"quantization_config": qc})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = transformers.Qwen3Model.from_pretrained(d, torch_dtype=torch.float32)
    ref_model.eval()
    assert type(ref_model.layers[0].self_attn.q_proj).__name__ == "AutoBitLinear"
    ids = IDS + [EOS]
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).last_hidden_state[0].numpy()
    model = load_model(d, head="float32")
    assert_close(model.hidden_states(ids), ref)
    assert float(model.embed([ids])[0] @ unit(ref[-1])) > 0.9999


# --- loading, pooling config, refusals ---------------------------------------------------------

def test_pooling_is_read_from_the_sentence_transformers_files(tmp_path):
    from bitnet_edu import load_model
    from bitnet_edu.formats.hf import read_pooling
    d = write_embedding_checkpoint(tmp_path / "mean", pooling="mean_tokens")
    assert read_pooling(d) == "mean"
    m = load_model(d, head="float32")
    assert m.pooling == "mean"
    ids = IDS + [EOS]
    assert np.allclose(m.embed([ids])[0], m.embed([ids], pooling="mean")[0])
    assert not np.allclose(m.embed([ids])[0], m.embed([ids], pooling="last")[0])
    bare = write_embedding_checkpoint(tmp_path / "bare", pooling=None)
    assert read_pooling(bare) is None and load_model(bare).pooling == "last"  # the model card's
    cls = write_embedding_checkpoint(tmp_path / "cls", pooling="cls_token")
    with pytest.raises(ValueError, match="pooling_mode_cls_token is not supported"):
        load_model(cls)
    (cls / "modules.json").write_text(json.dumps([{"path": "../../etc", "type": "x.Pooling"}]))
    with pytest.raises(ValueError, match="outside the model directory"):
        read_pooling(cls)


def test_refusals_name_the_problem(tmp_path):
    from bitnet_edu import load_model
    gemma = write_embedding_checkpoint(tmp_path / "gemma",
                                       config_overrides={"model_type": "gemma3_text",
                                                         "use_bidirectional_attention": True})
    with pytest.raises(ValueError, match="use_bidirectional_attention=True: not supported"):
        load_model(gemma)
    # a plain (float) Qwen3 has no per-projection norms: not a BitNet-embedding checkpoint
    plain = write_embedding_checkpoint(
        tmp_path / "plain", drop=[f"layers.{i}.{p}.norm.weight" for i in range(2) for p in PROJ])
    with pytest.raises(ValueError, match=r"missing tensor 'model.layers.0.self_attn.q_proj.norm"
                                         r".weight' and every other .* not BitNet-embedding"):
        load_model(plain)
    d = write_embedding_checkpoint(tmp_path / "ok")
    m = load_model(d, head="float32")
    with pytest.raises(ValueError, match="does not generate text"):
        m.generate("hello")
    with pytest.raises(ValueError, match="LoRA adapters run on the decoders"):
        load_model(d, adapter="chat")
    with pytest.raises(ValueError, match="pooling must be one of"):
        m.embed("hi", pooling="max")
    with pytest.raises(ValueError, match="empty text"):
        m.embed([[]])
    long = "the quick brown fox " * 40  # > 64 positions
    with pytest.raises(ValueError, match="longer than the model reads.*truncate=True"):
        m.embed(long)
    e = m.embed(long, truncate=True)  # cut to 64 tokens, the eos kept last
    ids = m.tokenizer.encode(long).ids
    ref = m.embed([ids[:63] + [EOS]])[0]
    assert np.allclose(e, ref, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        m.embed([[5, 300]])


def test_the_decoder_refuses_this_block_and_vice_versa():
    from bitnet_edu.model.embedding import EmbeddingModel
    from bitnet_edu.model.transformer import BitNetModel
    cfg = BitNetConfig.from_dict(hub_config())
    with pytest.raises(ValueError, match="build it with EmbeddingModel"):
        BitNetModel.from_checkpoint(cfg, {})
    with pytest.raises(ValueError, match="use BitNetModel"):
        EmbeddingModel.from_checkpoint(BitNetConfig(**SHAPE), {})
    with pytest.raises(ValueError, match="no attn_sub_norm"):
        BitNetConfig(**SHAPE, projection_norms=True, sub_norms=True)


def test_preset_is_the_published_shape_and_random_model_embeds():
    import bitnet_edu
    p = PRESETS["bitnet-embedding-0.6b"]
    assert (p["hidden_size"], p["num_hidden_layers"], p["num_attention_heads"],
            p["num_key_value_heads"], p["head_dim"], p["intermediate_size"], p["vocab_size"]) == \
        (1024, 28, 16, 8, 128, 3072, 151936)
    assert p["eos_token_id"] == 151643 and p["rope_theta"] == 1e6
    assert EMBEDDING_MEMBERS["bitnet-embedding-0.6b"] == ("microsoft/bitnet-embedding-0.6b",)
    cfg = BitNetConfig.preset("bitnet-embedding-0.6b")
    assert 0.59e9 < cfg.n_params < 0.60e9  # "~0.6B" (595.78M in the guide's F16 count)
    assert BitNetConfig.from_dict(cfg.to_dict()).projection_norms
    m = bitnet_edu.random_model("bitnet-embedding-0.6b", num_hidden_layers=1)
    e = m.embed([[1, 2, 3], [4, 5, 6, 7]])
    assert e.shape == (2, 1024) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert not np.allclose(e[0], e[1])


def test_decoder_embed_pools_its_hidden_states():
    """``BitNetModel.embed`` on the shipped decoder: last/mean pooling of hidden_states, unit
    length, the same ranking a cosine gives, and hidden_states equal to what the head reads."""
    import bitnet_edu
    from bitnet_edu.model.layers import rms_norm  # noqa: F401 (the one norm)
    m = bitnet_edu.load_model()
    ids = m.encode("In the beginning God created the heaven and the earth.")
    h = m.hidden_states([m.config.bos_token_id] + ids)
    logits = m.lm_head.logits(h)
    np.testing.assert_allclose(logits, m.logits([m.config.bos_token_id] + ids), rtol=0, atol=1e-4)
    texts = ["In the beginning God created the heaven and the earth.", "Jesus wept."]
    e = m.embed(texts)
    np.testing.assert_allclose(e[0], unit(h[-1]), atol=1e-5)
    mean = m.embed(texts, pooling="mean", normalize=False)
    np.testing.assert_allclose(mean[0], h.mean(0), atol=1e-4)
    assert m.embed([]).shape == (0, m.config.hidden_size)



# --- bitnet-embedding-270m: the Gemma3 block ------------------------------------------------

GEMMA_SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=32)
WINDOW = 4  # short enough that the 13-token inputs below slide


def gemma_config(**over) -> dict:
    """A Gemma3 text config.json (transformers 4.x keys) at a tiny shape: two sliding layers and
    a full one, query_pre_attn_scalar not head_dim (so the score scale is tested)."""
    return {"architectures": ["Gemma3TextModel"], "model_type": "gemma3_text",
            "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": None,
            "bos_token_id": 0, "eos_token_id": EOS, "pad_token_id": 2, "final_logit_softcapping": None,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 64,
            "query_pre_attn_scalar": 20, "rms_norm_eps": 1e-6, "rope_local_base_freq": 10000.0,
            "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
            "tie_word_embeddings": True, "torch_dtype": "float32",
            "use_bidirectional_attention": False, "quantization_config": {
                "quant_method": "bitnet", "linear_class": "autobitlinear",
                "quantization_mode": "online", "use_rms_norm": True, "rms_norm_eps": 1e-6},
            **GEMMA_SHAPE, **over}


def write_gemma_checkpoint(directory, seed=0) -> Path:
    """transformers' Gemma3TextModel names (no model. prefix), float32, the layer norms stored
    Gemma's way (w around 0, the norm multiplies by 1 + w), the projections' own norms plain
    (around 1), sentence-transformers' last-token pooling."""
    from safetensors.numpy import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    c = gemma_config()
    rng = np.random.default_rng(seed)
    h, f, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    shapes = {"self_attn.q_proj": (c["num_attention_heads"] * hd, h),
              "self_attn.k_proj": (c["num_key_value_heads"] * hd, h),
              "self_attn.v_proj": (c["num_key_value_heads"] * hd, h),
              "self_attn.o_proj": (h, c["num_attention_heads"] * hd),
              "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    t = {"embed_tokens.weight": 0.3 * rng.standard_normal((c["vocab_size"], h)),
         "norm.weight": 0.2 * rng.standard_normal(h)}
    for i in range(c["num_hidden_layers"]):
        p = f"layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            t[p + n + ".weight"] = 0.2 * rng.standard_normal(h)
        for n in ("self_attn.q_norm", "self_attn.k_norm"):
            t[p + n + ".weight"] = 0.2 * rng.standard_normal(hd)
        for name, (o, k) in shapes.items():
            t[p + name + ".weight"] = rng.uniform(0.15, 0.4) * rng.standard_normal((o, k))
            t[p + name + ".rms_norm.weight"] = 1 + 0.2 * rng.standard_normal(k)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in t.items()},
              str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(c, indent=2))
    tiny_tokenizer(c["vocab_size"]).save(str(d / "tokenizer.json"))
    (d / "modules.json").write_text(json.dumps([
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling").mkdir(exist_ok=True)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    return d


def test_gemma3_block_matches_transformers(tmp_path, torch_oracle):
    """bitnet-embedding-270m's block against transformers' own Gemma3TextModel with
    use_rms_norm BitLinears: (1 + w) norms, the four layer norms, sqrt(hidden) embedding,
    query_pre_attn_scalar, GELU-tanh, and sliding-window layers with their own RoPE base (the
    13 tokens are longer than the window); fast and reference paths both."""
    transformers = pytest.importorskip("transformers")
    import torch
    from bitnet_edu import load_model
    from bitnet_edu.model.embedding import EmbeddingModel
    d = write_gemma_checkpoint(tmp_path / "g", seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = transformers.Gemma3TextModel.from_pretrained(d, torch_dtype=torch.float32)
    ref_model.eval()
    assert type(ref_model.layers[0].mlp.down_proj).__name__ == "AutoBitLinear"
    ids = [0] + IDS + [EOS]
    assert len(ids) > WINDOW
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).last_hidden_state[0].numpy()
    model = load_model(d, head="float32")
    assert isinstance(model, EmbeddingModel)
    c = model.config
    assert (c.sandwich_norms, c.norm_offset, c.scale_embedding, c.hidden_act) == \
        (True, 1.0, True, "gelu_tanh")
    assert (c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar) == (1e6, 1e4, 20.0)
    assert_close(model.hidden_states(ids), ref)
    model.fast = False
    try:
        assert_close(model.hidden_states(ids), ref)
    finally:
        model.fast = True
    e = model.embed([ids])[0]
    assert float(e @ unit(ref[-1])) > 0.9999
    # the window matters: the same model with full attention everywhere is another model
    model.config.layer_types = ["full_attention"] * 3
    try:
        assert np.abs(model.hidden_states(ids) - ref).max() > 1e-2 * np.abs(ref).max()
    finally:
        model.config.layer_types = ["sliding_attention", "sliding_attention", "full_attention"]


def reference_gemma_hidden(directory, ids) -> np.ndarray:
    """Oracle 1 for the Gemma3 block, float32 torch, written from its description (Gemma3's
    ``x * rsqrt(mean(x**2) + eps) * (1 + w)`` norms; rows times ``sqrt(hidden)``; per layer
    ``a = in_ln(x)``, q/k/v BitLinears with their own plain-``w`` input norms, q/k head norms,
    RoPE with the local base on sliding layers, scores times ``query_pre_attn_scalar**-0.5``,
    causal mask plus ``s > p - window`` on sliding layers, ``x += post_attn_ln(o(att))``,
    ``x += post_ff_ln(down(gelu_tanh(gate(b)) * up(b)))`` with ``b = pre_ff_ln(x)``; final
    norm)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    c = json.loads((Path(directory) / "config.json").read_text())
    t = {k: v.float() for k, v in load_file(str(Path(directory) / "model.safetensors")).items()}
    eps, heads, kv, d = (c["rms_norm_eps"], c["num_attention_heads"], c["num_key_value_heads"],
                         c["head_dim"])

    def rms(x, w, plus_one=True):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * ((1 + w) if plus_one else w)

    def bitlinear(x, name):
        w = t[name + ".weight"]
        s = 1.0 / w.abs().mean().clamp(min=1e-5)
        wq = (w * s).round().clamp(-1, 1) / s
        xn = rms(x, t[name + ".rms_norm.weight"], plus_one=False)
        a = 127.0 / xn.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        return F.linear((xn * a).round().clamp(-128, 127) / a, wq)

    def rope(x, theta):
        inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
        emb = torch.cat([torch.arange(n).float()[:, None] * inv[None, :]] * 2, dim=-1)
        rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
        return x * emb.cos()[:, None, :] + rot * emb.sin()[:, None, :]

    n = len(ids)
    pos = torch.arange(n)
    with torch.no_grad():
        x = t["embed_tokens.weight"][torch.tensor(ids)] * torch.tensor(c["hidden_size"] ** 0.5)
        for i, kind in enumerate(c["layer_types"]):
            p = f"layers.{i}."
            sliding = kind == "sliding_attention"
            theta = c["rope_local_base_freq"] if sliding else c["rope_theta"]
            a = rms(x, t[p + "input_layernorm.weight"])
            q = rms(bitlinear(a, p + "self_attn.q_proj").view(n, heads, d),
                    t[p + "self_attn.q_norm.weight"])
            k = rms(bitlinear(a, p + "self_attn.k_proj").view(n, kv, d),
                    t[p + "self_attn.k_norm.weight"])
            v = bitlinear(a, p + "self_attn.v_proj").view(n, kv, d)
            q, k = rope(q, theta), rope(k, theta)
            k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
            allowed = pos[None, :] <= pos[:, None]
            if sliding:
                allowed &= pos[None, :] > pos[:, None] - c["sliding_window"]
            scores = torch.einsum("thd,shd->hts", q, k) * c["query_pre_attn_scalar"] ** -0.5
            scores = scores.masked_fill(~allowed, float("-inf"))
            att = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(n, heads * d)
            x = x + rms(bitlinear(att, p + "self_attn.o_proj"),
                        t[p + "post_attention_layernorm.weight"])
            b = rms(x, t[p + "pre_feedforward_layernorm.weight"])
            g = F.gelu(bitlinear(b, p + "mlp.gate_proj"), approximate="tanh")
            m = bitlinear(g * bitlinear(b, p + "mlp.up_proj"), p + "mlp.down_proj")
            x = x + rms(m, t[p + "post_feedforward_layernorm.weight"])
        return rms(x, t["norm.weight"]).numpy()


def test_gemma3_block_matches_the_written_reference(tmp_path, torch_oracle):
    from bitnet_edu import load_model
    d = write_gemma_checkpoint(tmp_path / "g", seed=11)
    ids = [0] + IDS + [EOS]
    ref = reference_gemma_hidden(d, ids)
    model = load_model(d, head="float32")
    assert_close(model.hidden_states(ids), ref)
    texts = ["Hello world! Hello BitNet.", "The quick brown fox jumps over the lazy dog."]
    for text, e in zip(texts, model.embed(texts)):
        want = unit(reference_gemma_hidden(d, [0] + model.tokenizer.encode(text).ids + [EOS])[-1])
        assert float(e @ want) > 0.9999  # bos first (config bos_token_id 0), eos appended


def test_gemma3_config_keys_and_refusals():
    cfg = BitNetConfig.from_dict(gemma_config(layer_types=None, sliding_window_pattern=2))
    assert cfg.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    v5 = {k: v for k, v in gemma_config().items() if k not in ("rope_theta",
                                                                "rope_local_base_freq")}
    v5["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 5e3}}
    c5 = BitNetConfig.from_dict(v5)
    assert (c5.rope_theta, c5.rope_local_theta) == (5e5, 5e3)
    assert BitNetConfig.from_dict(c5.to_dict()).layer_types == c5.layer_types
    for bad, msg in [({"attn_logit_softcapping": 50.0}, "soft-capping"),
                     ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "only default"),
                     ({"layer_types": ["sliding_attention"]}, "one of .* per layer"),
                     ({"sliding_window": 0}, "sliding_window=0")]:
        with pytest.raises(ValueError, match=msg):
            BitNetConfig.from_dict(gemma_config(**bad))
    p = BitNetConfig.preset("bitnet-embedding-270m")
    assert 0.26e9 < p.n_params < 0.28e9  # "~270M"
    assert p.layer_types.count("full_attention") == 3 and p.sliding_window == 512
    assert EMBEDDING_MEMBERS["bitnet-embedding-270m"] == ("microsoft/bitnet-embedding-270m",)


def test_windowed_attention_in_blocks_equals_the_whole():
    from bitnet_edu.model.embedding import _windowed
    from bitnet_edu.model.layers import attention
    rng = np.random.default_rng(1)
    q = rng.standard_normal((23, 4, 8)).astype(np.float32)
    k, v = (rng.standard_normal((23, 2, 8)).astype(np.float32) for _ in range(2))
    for window in (None, 1, 5, 40):
        whole = attention(q, k, v, 0, window=window, scale=0.3)
        np.testing.assert_allclose(_windowed(q, k, v, window, 0.3, block=6), whole,
                                   rtol=1e-5, atol=1e-6)
    one = attention(q, k, v, 0, window=1)  # a window of 1: each position reads itself only
    np.testing.assert_allclose(one, np.repeat(v, 2, axis=1).reshape(23, -1), atol=1e-6)
