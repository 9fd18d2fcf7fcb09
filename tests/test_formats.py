"""The formats package: streaming readers and writers, one build path, old import paths.

No torch needed: models come from ``random_model`` at a small shape (in_features multiples of
128, so every linear fits I2_S), files are written and read with our own code.
"""

import json
import warnings

import numpy as np
import pytest

import bitnet_edu
from bitnet_edu.formats import RowBlocks, expected_tensors
from bitnet_edu.formats.gguf import (GGML_F32, GGUFReader, GGUFWriter, iter_gguf_checkpoint,
                                     read_gguf_checkpoint, to_gguf)
from bitnet_edu.formats.hf import iter_hf_checkpoint, read_hf_checkpoint, write_hf_checkpoint
from bitnet_edu.formats.schema import in_order
from bitnet_edu.model.transformer import BitNetModel

SHAPE = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             bos_token_id=0, eos_token_id=[1, 2])
IDS = [0, 5, 17, 40, 100, 3, 9, 55, 200, 299, 7, 8]


def small_model(head="float32", seed=0):
    return bitnet_edu.random_model(dict(SHAPE), seed=seed, head=head)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A GGUF written from a tokenizer-less random model (placeholder vocabulary).  Its float
    embedding is rounded to f16 values first: the GGUF stores f16, so the file then holds
    exactly the model."""
    m = small_model()
    m.head.table = m.head.table.astype(np.float16).astype(np.float32)
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    with pytest.warns(UserWarning, match="placeholder vocabulary of 300"):
        to_gguf(m, path, progress=False)
    return m, path


def test_to_gguf_of_a_model_without_tokenizer_loads_with_the_same_logits(gguf_file):
    m, path = gguf_file
    r = GGUFReader(path)
    assert r.metadata["tokenizer.ggml.tokens"][:3] == ["<tok_0>", "<tok_1>", "<tok_2>"]
    assert len(r.metadata["tokenizer.ggml.tokens"]) == 300
    assert (r.metadata["tokenizer.ggml.bos_token_id"], r.metadata["tokenizer.ggml.eos_token_id"],
            r.metadata["tokenizer.ggml.eot_token_id"]) == (0, 1, 2)
    assert r.tensors["blk.0.ffn_down.weight"].type_name == "I2_S"
    loaded = bitnet_edu.load_model(path, head="float32", progress=False)
    assert loaded.tokenizer.get_vocab_size() == 300
    assert loaded.config.eos_ids == [1, 2]
    np.testing.assert_array_equal(loaded.logits(IDS), m.logits(IDS))


def test_streaming_gguf_load_equals_the_dict_load(gguf_file):
    _, path = gguf_file
    config, weights, tok = read_gguf_checkpoint(path, progress=False)
    for head in ("float32", "int8", "int4"):
        whole = BitNetModel.from_checkpoint(config, weights, head=head, tokenizer=tok)
        streamed = bitnet_edu.load_model(path, head=head, progress=False)
        np.testing.assert_array_equal(streamed.logits(IDS), whole.logits(IDS), err_msg=head)


def test_row_blocks_quantize_like_the_whole_table():
    """A head built block by block (blocks smaller than the vocabulary) is the same table."""
    m = small_model()
    config, w = m.to_checkpoint()
    emb = w["model.embed_tokens.weight"]
    for head in ("int8", "int4"):
        whole = BitNetModel.from_checkpoint(config, w, head=head)
        blocks = RowBlocks(emb.shape, lambda a, b: emb[a:b], block=64)
        stream = ((n, blocks if n == "model.embed_tokens.weight" else a) for n, a in w.items())
        part = BitNetModel.from_checkpoint(config, stream, head=head)
        np.testing.assert_array_equal(part.head.table, whole.head.table)
        np.testing.assert_array_equal(part.head.scale, whole.head.scale)
        np.testing.assert_array_equal(part.logits(IDS), whole.logits(IDS))
    np.testing.assert_array_equal(np.asarray(blocks), emb)


def test_gguf_blocks_give_the_same_tensors(gguf_file):
    _, path = gguf_file
    _, weights, _ = read_gguf_checkpoint(path, progress=False)
    it = iter_gguf_checkpoint(path, blocks=True)
    next(it)
    items = list(it)
    assert [n for n, _ in items] == list(weights)
    emb = dict(items)["model.embed_tokens.weight"]
    assert isinstance(emb, RowBlocks) and emb.shape == (300, 128)
    np.testing.assert_array_equal(np.asarray(emb), weights["model.embed_tokens.weight"])


def test_iter_checkpoint_is_the_schema_in_order():
    m = small_model(head="int8")
    names = [n for n, _ in m.iter_checkpoint()]
    assert names == list(expected_tensors(m.config))
    config, w = m.to_checkpoint()
    for (n, a), b in zip(m.iter_checkpoint(blocks=True), w.values()):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=n)
    assert w["model.layers.1.mlp.up_proj.weight"].dtype == np.int8
    assert w["model.layers.1.mlp.up_proj.weight_scale"].shape == (1,)


def bf16_exact(m):
    """Round the model's float tensors to bf16 values (what the HF packed file stores)."""
    from bitnet_edu.formats.safetensors import bf16_to_float32, float32_to_bf16

    def r(x):
        return bf16_to_float32(float32_to_bf16(np.atleast_1d(np.asarray(x, np.float32))))

    m.head.table = r(m.head.table)
    for L in m.layers:
        L.qkv_scales, L.gate_up_scales = r(L.qkv_scales), r(L.gate_up_scales)
        L.o_scale, L.down_scale = float(r(L.o_scale)[0]), float(r(L.down_scale)[0])
    return m


def test_write_hf_checkpoint_round_trip(tmp_path):
    m = bf16_exact(small_model())
    out = write_hf_checkpoint(tmp_path / "hf", m.config, m.iter_checkpoint(blocks=True),
                              generation_config={"eos_token_id": [1, 2]})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quantization_mode"] == "offline"
    assert cfg["hidden_size"] == 128 and cfg["torch_dtype"] == "bfloat16"
    assert not (out / "tokenizer.json").exists()
    _, src = m.to_checkpoint()
    config, back = read_hf_checkpoint(out)
    assert list(back) == list(src)
    for name, a in src.items():
        np.testing.assert_array_equal(back[name], a, err_msg=name)
    loaded = bitnet_edu.load_model(out, head="float32", progress=False)
    np.testing.assert_array_equal(loaded.logits(IDS), m.logits(IDS))
    assert loaded.config.eos_ids == [1, 2]


def test_write_hf_checkpoint_takes_any_order_and_refuses_gaps(tmp_path):
    m = small_model()
    _, w = m.to_checkpoint()
    a = write_hf_checkpoint(tmp_path / "a", m.config, w)
    b = write_hf_checkpoint(tmp_path / "b", m.config, reversed(list(w.items())))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    del w["model.layers.1.mlp.down_proj.weight_scale"]
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.down_proj.weight_sc"):
        write_hf_checkpoint(tmp_path / "c", m.config, iter(w.items()))
    assert not (tmp_path / "c" / "model.safetensors").exists()
    w["model.layers.1.mlp.down_proj.weight_scale"] = np.ones(1, np.float32)
    w["model.layers.0.mlp.up_proj.weight"] = w["model.layers.0.mlp.up_proj.weight"] * 2
    with pytest.raises(ValueError, match="up_proj.weight.*must hold only -1, 0, \\+1"):
        write_hf_checkpoint(tmp_path / "d", m.config, w)


def test_in_order_buffers_and_checks():
    items = [("b", 2), ("a", 1), ("c", 3)]
    assert list(in_order(iter(items), ["a", "b", "c"])) == [("a", 1), ("b", 2), ("c", 3)]
    with pytest.raises(ValueError, match="'x' does not belong"):
        list(in_order(iter(items + [("x", 0)]), ["a", "b", "c"]))
    with pytest.raises(ValueError, match="'a' comes twice"):
        list(in_order(iter(items + [("a", 1)]), ["a", "b", "c"]))
    with pytest.raises(ValueError, match="missing tensor 'd'"):
        list(in_order(iter(items), ["a", "b", "c", "d"]))


def test_gguf_writer_streams_chunks_in_header_order(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    specs = {"x": (GGML_F32, (4, 3)), "y": (GGML_F32, (5,))}
    with GGUFWriter(tmp_path / "s.gguf", {"general.architecture": "test"}, specs) as w:
        w.write("x", (x[:1], x[1:]))  # row blocks
        w.write("y", np.ones(5, np.float32))
    r = GGUFReader(tmp_path / "s.gguf")
    np.testing.assert_array_equal(r.float32("x"), x)
    np.testing.assert_array_equal(r.float32("x", rows=(1, 3)), x[1:3])
    with pytest.raises(ValueError, match="out of order: expected 'x'"):
        with GGUFWriter(tmp_path / "t.gguf", {}, specs) as w:
            w.write("y", np.ones(5, np.float32))
    with pytest.raises(ValueError, match="'y': got 16 bytes, its header says 20"):
        with GGUFWriter(tmp_path / "t.gguf", {}, specs) as w:
            w.write("x", x)
            w.write("y", np.ones(4, np.float32))
    with pytest.raises(ValueError, match="'y' was never written"):
        with GGUFWriter(tmp_path / "t.gguf", {}, specs) as w:
            w.write("x", x)
    assert not list(tmp_path.glob("t.gguf*"))


def test_progress_false_shows_no_bar_for_either_format(gguf_file, tmp_path, capfd):
    m, path = gguf_file
    d = write_hf_checkpoint(tmp_path / "hf", m.config, m.iter_checkpoint())
    capfd.readouterr()
    bitnet_edu.load_model(path, progress=False)
    bitnet_edu.load_model(d, progress=False)
    err = capfd.readouterr().err
    assert "loading" not in err and "reading GGUF" not in err and "tensor" not in err, err


def test_to_gguf_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match=r"\.iter_checkpoint\(\) or \.to_checkpoint\(\); got "):
        to_gguf(object(), tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_hf_reader_streams_without_holding_the_file(tmp_path):
    """Each tensor read is a fresh, writable array (not a view of a memory map)."""
    m = small_model()
    d = write_hf_checkpoint(tmp_path / "hf", m.config, m.iter_checkpoint())
    it = iter_hf_checkpoint(d, blocks=True)
    next(it)
    for name, a in it:
        if isinstance(a, RowBlocks):
            a = next(a.blocks())[1]
        assert a.base is None or not isinstance(a.base, np.memmap), name
        assert a.flags.writeable, name


def test_old_import_paths_are_the_same_objects():
    import bitnet_edu.export
    import bitnet_edu.formats.gguf.container
    import bitnet_edu.formats.hf
    import bitnet_edu.formats.safetensors
    import bitnet_edu.formats.schema
    import bitnet_edu.gguf
    import bitnet_edu.gguf.checkpoint
    import bitnet_edu.gguf.container
    import bitnet_edu.gguf.tokenizer
    import bitnet_edu.model.checkpoint
    import bitnet_edu.model.safetensors_io

    assert bitnet_edu.gguf.GGUFReader is bitnet_edu.formats.gguf.container.GGUFReader
    fg = bitnet_edu.formats.gguf
    assert bitnet_edu.gguf.container.tensor_nbytes is fg.container.tensor_nbytes
    assert bitnet_edu.gguf.checkpoint.iter_gguf_checkpoint is iter_gguf_checkpoint
    assert bitnet_edu.gguf.tokenizer.tokenizer_to_gguf is fg.tokenizer.tokenizer_to_gguf
    assert bitnet_edu.export.to_gguf is to_gguf
    assert bitnet_edu.model.checkpoint.read_hf_checkpoint is read_hf_checkpoint
    assert bitnet_edu.model.checkpoint.expected_tensors is expected_tensors
    assert (bitnet_edu.model.safetensors_io.read_safetensors
            is bitnet_edu.formats.safetensors.read_safetensors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import bitnet_edu.model  # noqa: F401  (the package's own names still import cleanly)


def test_writers_never_follow_a_planted_symlink(tmp_path):
    """A symlink at the old predictable temporary name must not redirect the write."""
    from bitnet_edu.formats.gguf import write_gguf
    from bitnet_edu.formats.safetensors import write_safetensors

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name, write in [("out.gguf", lambda p: write_gguf(p, {"general.architecture": "x"},
                                                          {"t": np.ones(4, np.float32)})),
                        ("out.safetensors", lambda p: write_safetensors(p, {"t": np.ones(4)}))]:
        (tmp_path / (name + ".tmp")).symlink_to(victim)
        write(tmp_path / name)
        assert victim.read_text() == "keep me"
        assert (tmp_path / name).is_file() and not (tmp_path / name).is_symlink()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_writer_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    from bitnet_edu.formats.safetensors import SafetensorsWriter

    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(ValueError, match="never written"):
        with SafetensorsWriter(out, {"a": ("F32", (2,)), "b": ("F32", (2,))}) as w:
            w.write("a", np.zeros(2, np.float32))
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_writing_into_a_missing_folder_is_a_clear_error(tmp_path):
    from bitnet_edu.formats.safetensors import write_safetensors

    with pytest.raises(ValueError, match="does not exist"):
        write_safetensors(tmp_path / "nope" / "m.safetensors", {"t": np.ones(2)})
