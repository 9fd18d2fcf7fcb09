"""GGUF container: round trips, byte-exact layout, and a clear GGUFError for every corruption."""

import struct

import numpy as np
import pytest

from bitnet_edu.gguf import (GGML_BF16, GGML_F16, GGML_F32, GGML_I2_S, GGUFError, GGUFReader,
                             TensorData, Value, write_gguf)
from bitnet_edu.gguf.container import (T_ARRAY, T_BOOL, T_FLOAT64, T_INT8, T_INT16, T_INT32, T_INT64,
                                       T_STRING, T_UINT8, T_UINT16, T_UINT32, T_UINT64, tensor_nbytes)
from bitnet_edu.packing import pack_i2s


def small_model_file(path, *, alignment=32):
    """A tiny valid GGUF with every metadata type and one tensor of each supported type."""
    rng = np.random.default_rng(0)
    q = rng.integers(-1, 2, size=(4, 128)).astype(np.int8)
    meta = {
        "general.architecture": "bitnet-b1.58",
        "u8": Value(T_UINT8, 200), "i8": Value(T_INT8, -5), "u16": Value(T_UINT16, 60000),
        "i16": Value(T_INT16, -300), "u32": 7, "i32": Value(T_INT32, -70000), "f32": 1e-5,
        "bool": True, "u64": Value(T_UINT64, 2**40), "i64": Value(T_INT64, -(2**40)),
        "f64": Value(T_FLOAT64, 0.1), "str": "héllo",
        "strs": ["a", "", "ü b"], "ints": [1, -2, 3],
        "nested": Value(T_ARRAY, [["x"], ["y", "z"]], T_ARRAY),
    }
    tensors = {
        "norm.weight": rng.standard_normal(5).astype(np.float32),  # 20 bytes: forces padding
        "emb.weight": rng.standard_normal((3, 4)).astype(np.float16),
        "bf.weight": TensorData(GGML_BF16, (2, 3), np.array([0x3F80, 0x4000, 0xC040, 0, 0x3F00, 0x7F80], np.uint16)),
        "blk.0.attn_q.weight": TensorData.i2s(q, 0.25),
    }
    write_gguf(path, meta, tensors, alignment=alignment)
    return meta, tensors, q


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.gguf"
    meta, tensors, q = small_model_file(path)
    return path, meta, tensors, q


def test_round_trip_metadata_and_tensors(small):
    path, meta, tensors, q = small
    r = GGUFReader(path)
    assert r.version == 3 and r.alignment == 32
    m = r.metadata
    assert (m["u8"], m["i8"], m["u16"], m["i16"], m["u32"], m["i32"]) == (200, -5, 60000, -300, 7, -70000)
    assert m["f32"] == 1e-5 and m["f64"] == 0.1 and m["bool"] is True
    assert (m["u64"], m["i64"]) == (2**40, -(2**40))
    assert m["str"] == "héllo" and m["strs"] == ["a", "", "ü b"] and m["nested"] == [["x"], ["y", "z"]]
    assert m["ints"].tolist() == [1, -2, 3] and r.types["ints"] == (T_ARRAY, T_INT32)
    assert r.types["u32"] == (T_UINT32, None) and r.types["str"] == (T_STRING, None)
    assert r.types["bool"] == (T_BOOL, None)
    assert list(r.tensors) == list(tensors)
    np.testing.assert_array_equal(r.float32("norm.weight"), tensors["norm.weight"])
    np.testing.assert_array_equal(r.float32("emb.weight"), tensors["emb.weight"].astype(np.float32))
    np.testing.assert_array_equal(r.float32("bf.weight"), [[1, 2, -3], [0, 0.5, np.inf]])
    got_q, scale = r.i2s("blk.0.attn_q.weight")
    np.testing.assert_array_equal(got_q, q)
    assert scale == 0.25 and got_q.dtype == np.int8


def test_layout_offsets_and_sizes(small):
    """Every tensor starts aligned; I2_S takes n/4 + 32 bytes; ggml dims are the shape reversed."""
    path, *_ = small
    r = GGUFReader(path)
    assert r.data_offset % 32 == 0
    t = r.tensors["blk.0.attn_q.weight"]
    assert t.ggml_type == GGML_I2_S and t.shape == (4, 128) and t.nbytes == 4 * 128 // 4 + 32
    assert [r.tensors[n].offset % 32 for n in r.tensors] == [0, 0, 0, 0]
    assert r.tensors["norm.weight"].nbytes == 20 and r.tensors["emb.weight"].ggml_type == GGML_F16
    raw = r.raw("blk.0.attn_q.weight")
    assert raw[128:132].view(np.float32)[0] == np.float32(0.25)  # trailer starts with the scale
    assert not raw[132:].any()
    # the info record stores ggml order: dims[0] = 128 (in_features)
    blob = path.read_bytes()
    i = blob.index(b"blk.0.attn_q.weight") + len("blk.0.attn_q.weight")
    assert struct.unpack_from("<IQQI", blob, i) == (2, 128, 4, GGML_I2_S)


def test_i2s_trailer_bytes_match_packing():
    q = np.random.default_rng(1).integers(-1, 2, size=(2, 256)).astype(np.int8)
    td = TensorData.i2s(q, 1.5)
    assert td.data.size == tensor_nbytes(GGML_I2_S, q.size) == q.size // 4 + 32
    np.testing.assert_array_equal(td.data[: q.size // 4], pack_i2s(q))


def test_custom_alignment(tmp_path):
    path = tmp_path / "a64.gguf"
    small_model_file(path, alignment=64)
    r = GGUFReader(path)
    assert r.alignment == 64 and r.metadata["general.alignment"] == 64
    assert all(t.offset % 64 == 0 for t in r.tensors.values())


def test_pypi_gguf_reads_our_file(tmp_path):
    """An independent reader (PyPI gguf) agrees on a file without I2_S."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "f.gguf"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    h = np.linspace(-1, 1, 256).astype(np.float16).reshape(2, 128)
    write_gguf(path, {"general.architecture": "llama", "x.count": 5, "x.eps": 0.5, "x.toks": ["a", "b"]},
               {"a.weight": a, "h.weight": h})
    r = gguf.GGUFReader(path)
    assert r.fields["x.count"].contents() == 5 and r.fields["x.toks"].contents() == ["a", "b"]
    t = {t.name: t for t in r.tensors}
    np.testing.assert_array_equal(t["a.weight"].data, a)
    np.testing.assert_array_equal(t["h.weight"].data, h)
    assert list(t["a.weight"].shape) == [4, 3]  # ggml order


def test_we_read_pypi_gguf_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "g.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 500000.0)
    w.add_token_list(["x", "y"])
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    w.add_tensor("t.weight", a)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    r = GGUFReader(path)
    assert r.metadata["llama.block_count"] == 2 and r.metadata["llama.rope.freq_base"] == 500000.0
    assert r.metadata["tokenizer.ggml.tokens"] == ["x", "y"]
    np.testing.assert_array_equal(r.float32("t.weight"), a)


# --- corruption: each case must give a GGUFError that names the problem -----------------------

def _corrupt(path, fn):
    blob = bytearray(path.read_bytes())
    out = fn(blob)
    path.write_bytes(bytes(out if out is not None else blob))
    return path


def _info_pos(blob, name):
    """Byte offset just after a tensor's name in its info record."""
    return blob.index(name.encode()) + len(name)


CASES = {
    "bad magic": (lambda b: b.__setitem__(slice(0, 4), b"GGML"), "bad magic"),
    "version 1": (lambda b: b.__setitem__(slice(4, 8), struct.pack("<I", 1)), "unsupported GGUF version 1"),
    "big-endian": (lambda b: b.__setitem__(slice(4, 8), struct.pack(">I", 3)), "big-endian"),
    "absurd tensor count": (lambda b: b.__setitem__(slice(8, 16), struct.pack("<Q", 2**60)), "absurd counts"),
    "absurd kv count": (lambda b: b.__setitem__(slice(16, 24), struct.pack("<Q", 2**63)), "absurd counts"),
    "absurd key length": (lambda b: b.__setitem__(slice(24, 32), struct.pack("<Q", 2**62)), "byte offset 32"),
    "truncated header": (lambda b: b[:400], "truncated file"),
    "truncated counts": (lambda b: b[:100], "truncated or corrupt file"),
    "truncated data": (lambda b: b[:-40], "runs past the end of the file"),
    "empty": (lambda b: b[:0], "too small"),
    "unknown tensor type": (lambda b: b.__setitem__(
        slice(_info_pos(b, "norm.weight") + 12, _info_pos(b, "norm.weight") + 16),
        struct.pack("<I", 2)), "ggml type 2 (Q4_0) is not supported"),
    "too many dims": (lambda b: b.__setitem__(
        slice(_info_pos(b, "norm.weight"), _info_pos(b, "norm.weight") + 4), struct.pack("<I", 9)), "n_dims=9"),
    "misaligned offset": (lambda b: b.__setitem__(
        slice(_info_pos(b, "emb.weight") + 24, _info_pos(b, "emb.weight") + 32),
        struct.pack("<Q", 33)), "not a multiple of the alignment"),
    "zero dim": (lambda b: b.__setitem__(
        slice(_info_pos(b, "norm.weight") + 4, _info_pos(b, "norm.weight") + 12),
        struct.pack("<Q", 0)), "dimension of size 0"),
    "huge dims": (lambda b: b.__setitem__(
        slice(_info_pos(b, "emb.weight") + 4, _info_pos(b, "emb.weight") + 20),
        struct.pack("<QQ", 2**63, 2**63)), "more than the file can store"),
    "data offset past end": (lambda b: b.__setitem__(
        slice(_info_pos(b, "emb.weight") + 24, _info_pos(b, "emb.weight") + 32),
        struct.pack("<Q", 2**40)), "runs past the end"),
    "overlapping tensors": (lambda b: b.__setitem__(
        slice(_info_pos(b, "emb.weight") + 24, _info_pos(b, "emb.weight") + 32),
        struct.pack("<Q", 0)), "overlap"),
    "unknown value type": (lambda b: b.__setitem__(
        slice(_info_pos(b, "u32"), _info_pos(b, "u32") + 4), struct.pack("<I", 99)), "unknown value type 99"),
    "invalid utf-8": (lambda b: b.__setitem__(slice(_info_pos(b, "u32") - 3, _info_pos(b, "u32")), b"\xff\xfe\xfd"),
                      "not valid UTF-8"),
    "bad alignment": (None, "general.alignment must be a UINT32 power of two"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_file_gives_clear_error(small, case):
    path, meta, tensors, _ = small
    fn, message = CASES[case]
    if fn is None:  # alignment 48 written honestly
        write_gguf(path, {**meta, "general.alignment": Value(T_UINT32, 48)}, tensors)
    else:
        _corrupt(path, fn)
    with pytest.raises(GGUFError) as e:
        GGUFReader(path)
    assert isinstance(e.value, ValueError) and str(path) in str(e.value)
    if message:
        assert message in str(e.value)


def test_duplicate_tensor_name(tmp_path):
    path = tmp_path / "dup.gguf"
    write_gguf(path, {}, {"aa.weight": np.zeros(8, np.float32), "bb.weight": np.zeros(8, np.float32)})
    blob = path.read_bytes().replace(b"bb.weight", b"aa.weight")
    path.write_bytes(blob)
    with pytest.raises(GGUFError, match="duplicate tensor 'aa.weight'"):
        GGUFReader(path)


def test_duplicate_key(tmp_path):
    path = tmp_path / "dupk.gguf"
    write_gguf(path, {"k1": 1, "k2": 2}, {})
    path.write_bytes(path.read_bytes().replace(b"k2", b"k1"))
    with pytest.raises(GGUFError, match="duplicate metadata key 'k1'"):
        GGUFReader(path)


def test_i2s_code_3_is_corrupt(small):
    path, *_ = small
    r = GGUFReader(path)
    off = r.tensors["blk.0.attn_q.weight"].offset
    _corrupt(path, lambda b: b.__setitem__(off, 0xFF))
    with pytest.raises(GGUFError, match=r"blk.0.attn_q.weight.*code 3"):
        GGUFReader(path).i2s("blk.0.attn_q.weight")


def test_i2s_size_must_be_multiple_of_128(tmp_path):
    path = tmp_path / "odd.gguf"
    write_gguf(path, {}, {"w": TensorData(GGML_I2_S, (2, 32), np.zeros(2 * 32 // 4 + 32, np.uint8))})
    with pytest.raises(GGUFError, match="multiple of 128"):
        GGUFReader(path)


def test_reader_is_memory_mapped(small):
    path, *_ = small
    r = GGUFReader(path)
    assert isinstance(r.raw("norm.weight").base, np.memmap) or isinstance(r.raw("norm.weight"), np.memmap)


def test_writer_rejects_wrong_byte_count(tmp_path):
    with pytest.raises(ValueError, match="needs 160 bytes"):
        write_gguf(tmp_path / "x.gguf", {}, {"w": TensorData(GGML_I2_S, (2, 256), np.zeros(10, np.uint8))})
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.tmp").exists()


def test_float_accessor_rejects_i2s(small):
    path, *_ = small
    with pytest.raises(GGUFError, match="not a float type"):
        GGUFReader(path).float32("blk.0.attn_q.weight")
    with pytest.raises(GGUFError, match="not I2_S"):
        GGUFReader(path).i2s("norm.weight")
    assert GGML_F32 == 0
