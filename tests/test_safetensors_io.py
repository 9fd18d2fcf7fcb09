"""Our safetensors reader/writer against the safetensors library, and its error messages."""

import numpy as np
import pytest

from bitnet_edu.model.safetensors_io import (bf16_to_float32, float32_to_bf16, read_safetensors,
                                              write_safetensors)

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")


def test_reads_library_file_with_bf16(tmp_path):
    t = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(8, dtype=torch.uint8).reshape(2, 4)}
    st.save_file(t, str(tmp_path / "x.safetensors"))
    got = read_safetensors(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(got["a"], t["a"].float().numpy())
    np.testing.assert_array_equal(got["b"], t["b"].numpy())


def test_written_file_loads_in_library(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    write_safetensors(tmp_path / "y.safetensors", {"x": x, "q": np.int8([[1, -1]])}, bf16={"x"})
    back = st.load_file(str(tmp_path / "y.safetensors"))
    assert back["x"].dtype == torch.bfloat16
    np.testing.assert_array_equal(back["x"].float().numpy(), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(back["q"].numpy(), [[1, -1]])


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 100
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16(x), want)
    np.testing.assert_array_equal(bf16_to_float32(want), torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def test_truncated_file_names_tensor_and_offset(tmp_path):
    p = write_safetensors(tmp_path / "t.safetensors", {"w": np.ones((10, 10), np.float32)})
    data = p.read_bytes()
    p.write_bytes(data[:-7])
    with pytest.raises(ValueError, match=r"truncated.*'w'.*byte offset"):
        read_safetensors(p)


@pytest.mark.parametrize("bad", [b"", b"\x01\x02", b"\xff" * 8 + b"{}", b"\x04\x00\x00\x00\x00\x00\x00\x00nope"])
def test_corrupt_header_is_a_clean_error(tmp_path, bad):
    p = tmp_path / "c.safetensors"
    p.write_bytes(bad)
    with pytest.raises(ValueError):
        read_safetensors(p)
