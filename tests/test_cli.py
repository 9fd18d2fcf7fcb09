"""The bitnet-edu command line on a tiny checkpoint."""

import pytest

from bitnet_edu.cli import main


def test_generate_prints_text(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tiny_checkpoint import write_tiny_checkpoint
    d = write_tiny_checkpoint(tmp_path / "m")
    assert main(["generate", "--model", str(d), "Hello", "-n", "4", "--seed", "0"]) == 0
    out, err = capsys.readouterr()
    assert "new at" in err


def test_bad_path_is_a_clean_error(capsys):
    assert main(["generate", "--model", "/no/such/dir", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
