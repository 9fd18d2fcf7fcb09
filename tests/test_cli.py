"""The bitnet-edu command line on a tiny checkpoint.

Issue 11, defect 10: every error a user can cause is one line ``bitnet-edu: error: ...`` and
exit code 2, never a traceback.
"""

import json

import pytest

from bitnet_edu.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_checkpoint import write_tiny_checkpoint
    return write_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "m")


def one_line_error(capfd, *words):
    out, err = capfd.readouterr()
    # what a terminal shows: a progress bar redraws its line with "\r" and erases itself
    lines = [ln.split("\r")[-1] for ln in err.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    assert "Traceback" not in out + err, err
    assert len(lines) == 1 and lines[0].startswith("bitnet-edu: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_generate_prints_text(tiny, capsys):
    assert main(["generate", "--model", str(tiny), "Hello", "-n", "4", "--seed", "0"]) == 0
    out, err = capsys.readouterr()
    assert "new at" in err


def test_bad_path_is_a_clean_error(capfd):
    assert main(["generate", "--model", "/no/such/dir", "x"]) == 2
    one_line_error(capfd, "no such file")


@pytest.mark.parametrize("args, words", [
    (["-n", "-5"], ("--max-new-tokens", ">= 1", "-5")),
    (["-n", "many"], ("whole number",)),
    (["--temperature", "nan"], ("--temperature", "finite")),
    (["--temperature", "-1"], ("--temperature", ">= 0")),
    (["--temperature", "inf"], ("finite",)),
    (["--seed", "-1"], ("--seed", ">= 0")),
    (["--repetition-penalty", "0"], ("--repetition-penalty", "> 0")),
    (["--repetition-penalty", "-1.5"], ("> 0",)),
    (["--top-p", "1.5"], ("--top-p", "<= 1")),
    (["--top-k", "-2"], ("--top-k",)),
    (["--head", "int3"], ("invalid choice",)),
    ([], ("required",)),  # no prompt
])
def test_bad_arguments_are_one_line(args, words, capfd):
    """Before: argparse printed usage plus an error and exited; -n -5 and NaN reached the model."""
    assert main(["generate", "--model", "/does/not/matter", *args, *(["x"] if args else [])]) == 2
    one_line_error(capfd, *words)


def test_a_tiny_temperature_generates(tiny, capsys):
    """--temperature 1e-45 used to end in NumPy's 'probabilities contain NaN'."""
    assert main(["generate", "--model", str(tiny), "Hello", "-n", "3", "--temperature", "1e-45",
                 "--seed", "0"]) == 0


def _broken_copy(tiny, tmp_path, name, edit):
    import shutil
    d = tmp_path / name
    shutil.copytree(tiny, d)
    edit(d)
    return d


def _set_config(key, value):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = value
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


@pytest.mark.parametrize("name, edit", [
    ("zero heads", _set_config("num_attention_heads", 0)),  # was ZeroDivisionError
    ("eps a list", _set_config("rms_norm_eps", [1])),  # was a Numba TypingError
    ("hidden size a string", _set_config("hidden_size", "96")),  # was TypeError
    ("config a list", lambda d: (d / "config.json").write_text("[1, 2]")),  # was AttributeError
    ("config not JSON", lambda d: (d / "config.json").write_text("{nope")),
    ("generation config a list", lambda d: (d / "generation_config.json").write_text("[0]")),
    ("no weights", lambda d: (d / "model.safetensors").unlink()),
])
def test_broken_model_files_are_one_line(tiny, tmp_path, capfd, name, edit):
    d = _broken_copy(tiny, tmp_path, name.replace(" ", "_"), edit)
    assert main(["generate", "--model", str(d), "Hello", "-n", "2"]) == 2
    one_line_error(capfd)


def test_export_to_a_missing_directory_is_one_line(tiny, tmp_path, capfd):
    out = tmp_path / "no" / "such" / "dir" / "x.gguf"
    assert main(["export", "--model", str(tiny), str(out)]) == 2
    one_line_error(capfd, "does not exist")
    assert not out.parent.exists()


@pytest.mark.parametrize("exc, words", [
    (MemoryError(), ("out of memory",)),
    (OSError(28, "No space left on device"), ("No space left",)),
    (TypeError("unsupported operand"), ("TypeError: unsupported operand",)),
    (KeyError("hidden_size"), ("KeyError", "hidden_size")),
])
def test_unexpected_errors_are_one_line_too(monkeypatch, capfd, exc, words):
    """The last resort: whatever escapes the loaders is still one line, not a traceback."""
    import bitnet_edu.model.loading as loading

    def boom(*a, **k):
        raise exc
    monkeypatch.setattr(loading, "load_model", boom)
    assert main(["generate", "x"]) == 2
    one_line_error(capfd, *words)


def test_a_numba_typing_error_is_one_line(monkeypatch, capfd):
    import numba
    import numpy as np
    import bitnet_edu.model.loading as loading

    @numba.njit
    def f(x):
        return x + 1

    def boom(*a, **k):
        f(np.array(["a"]))  # a real TypingError: multi-line message
    monkeypatch.setattr(loading, "load_model", boom)
    assert main(["generate", "x"]) == 2
    one_line_error(capfd, "could not be compiled")


def test_debug_mode_shows_the_traceback(monkeypatch):
    import bitnet_edu.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: 1 / 0)
    monkeypatch.setenv("BITNET_EDU_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["generate", "x"])


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
def test_load_model_progress_false_shows_no_bar(tiny, tmp_path, capfd, fmt):
    from bitnet_edu.model.loading import load_model
    from tiny_checkpoint import write_tiny_checkpoint
    path = write_tiny_checkpoint(tmp_path / "m", hidden_size=128, intermediate_size=256,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    if fmt == "gguf":  # I2_S rows are whole 128-value blocks
        from bitnet_edu.export import to_gguf
        path = to_gguf(path, tmp_path / "m.gguf", progress=False)
    capfd.readouterr()
    load_model(path, progress=True)
    assert "loading" in capfd.readouterr().err  # the bar this test would notice
    load_model(path, progress=False)
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_evaluate_subcommand(capsys):
    from bitnet_edu.cli import main

    assert main(["evaluate", "offline", "--tasks", "bitnet_edu_cloze", "--limit", "2"]) == 0
    assert "bitnet_edu_cloze" in capsys.readouterr().out
