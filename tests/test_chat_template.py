"""Chat templates: a checkpoint's own jinja template, rendered in a sandbox as transformers does.

A tiny Falcon3-layout checkpoint (tests/test_family.py's writer) gets a Falcon3-like tokenizer
(``<|endoftext|>`` at id 11, its eos) and the no-tools Falcon3 Instruct template from
docs/family.md; transformers' ``apply_chat_template`` on the same directory is the oracle.  The
shipped default model keeps 2B4T's format; a missing template falls back to it; a template
reaching for Python internals is refused; a hub id goes through ``snapshot_download``
(monkeypatched: the hub is unreachable here) and its failures are one line on the command line.
"""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest

from bitnet_edu.formats import chat_template as ct
from bitnet_edu.formats.hf import read_chat_template
from bitnet_edu.model.generation import _prompt_ids, chat_prompt
from bitnet_edu.model.loading import load_model
from bitnet_edu.model.sampling import _stop_ids

# docs/family.md, "Falcon3 Instruct chat template" (the no-tools branch, whitespace control)
FALCON3_TEMPLATE = (
    "{%- for message in messages %}\n"
    "{%- if message['role'] == 'system' %}\n"
    "{{- '<|system|>\\n' + message['content'] + '\\n' }}\n"
    "{%- elif message['role'] == 'user' %}\n"
    "{{- '<|user|>\\n' + message['content'] + '\\n' }}\n"
    "{%- elif message['role'] == 'assistant' %}\n"
    "{%- if not loop.last %}\n"
    "{{- '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}\n"
    "{%- else %}\n"
    "{{- '<|assistant|>\\n' + message['content'] + eos_token }}\n"
    "{%- endif %}\n"
    "{%- endif %}\n"
    "{%- if loop.last and add_generation_prompt %}\n"
    "{{- '<|assistant|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- endfor %}")
# Falcon's tokenizer opens with 11 >>NAME<< tokens, so <|endoftext|> is id 11 (its eos)
FALCON_SPECIALS = [f">>{n}<<" for n in ("TITLE", "ABSTRACT", "INTRODUCTION", "SUMMARY", "COMMENT",
                                        "ANSWER", "QUESTION", "DOMAIN", "EMAIL_ADDRESS",
                                        "IP_ADDRESS", "PASSWORD")] + ["<|endoftext|>"]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who was Boaz?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who was Boaz?"},
     {"role": "assistant", "content": "A man of Bethlehem."}, {"role": "user", "content": "And?"}],
]


def _falcon_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=FALCON_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = ["<|system|>\nBe brief.\n<|user|>\nWho was Boaz?\n<|assistant|>\nA man.",
            "The quick brown fox jumps over the lazy dog."]
    tok.train_from_iterator(text * 4, trainer)
    assert tok.token_to_id("<|endoftext|>") == 11
    return tok


def write_falcon_chat_checkpoint(directory):
    """A tiny Falcon3-layout checkpoint with a tokenizer, the Falcon3 template, eos 11."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import test_family
    tok = _falcon_tokenizer()
    layout = dict(test_family.LAYOUTS["falcon3"], vocab_size=tok.get_vocab_size() + 5)
    test_family.LAYOUTS["falcon3_chat"] = layout  # the writer takes a layout name
    try:
        d = test_family.write_llama_checkpoint(directory, "falcon3_chat", seed=3)
    finally:
        del test_family.LAYOUTS["falcon3_chat"]
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
         "chat_template": FALCON3_TEMPLATE, "model_max_length": 64}, indent=2))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 11,
                                                          "eos_token_id": 11}))
    return d


@pytest.fixture(scope="module")
def falcon_dir(tmp_path_factory):
    return write_falcon_chat_checkpoint(tmp_path_factory.mktemp("falcon3_chat") / "m")


@pytest.fixture(scope="module")
def falcon(falcon_dir):
    return load_model(falcon_dir)


@pytest.fixture
def no_jinja(monkeypatch):
    """jinja2 made unimportable (as on an install without the [chat] extra)."""
    for name in [m for m in sys.modules if m == "jinja2" or m.startswith("jinja2.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("jinja2", "jinja2.sandbox", "jinja2.ext"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(ct, "_ENV", None)


# --- the template of the checkpoint -----------------------------------------------------------

@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_falcon3_prompt_equals_transformers(falcon, falcon_dir, i):
    from transformers import AutoTokenizer
    msgs = CONVERSATIONS[i]
    want = AutoTokenizer.from_pretrained(str(falcon_dir)).apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True)
    got = chat_prompt(falcon, msgs)
    assert got == want
    assert got.endswith("<|user|>\n" + msgs[-1]["content"] + "\n<|assistant|>\n")
    assert "<|eot_id|>" not in got  # not 2B4T's format


def test_falcon3_prompt_is_read_at_load(falcon):
    assert falcon.chat_template == FALCON3_TEMPLATE
    assert falcon.chat_tokens == {"eos_token": "<|endoftext|>"}
    assert not ct.is_2b4t_template(FALCON3_TEMPLATE)
    # a finished assistant turn ends in eos: the engine writes the template's token, not a guess
    text = chat_prompt(falcon, CONVERSATIONS[2])
    assert "A man of Bethlehem.<|endoftext|>\n<|user|>" in text
    ids = falcon.encode(text)
    assert ids.count(11) == 1  # <|endoftext|> is one token, id 11


def test_the_end_of_turn_token_stops_generation(falcon, falcon_dir, tmp_path):
    """Falcon3's eos (<|endoftext|>, id 11) is a stop id; a generation_config.json list of eos
    ids replaces config.json's, and every id in it stops generation."""
    assert falcon.tokenizer.token_to_id(falcon.chat_tokens["eos_token"]) in _stop_ids(falcon, None)
    ids, _ = _prompt_ids(falcon, chat_prompt(falcon, "Who was Boaz?"))
    first = falcon.generate(ids, 1, stop=[])[0]
    d = tmp_path / "m"
    shutil.copytree(falcon_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [11, first]}))
    m = load_model(d)
    assert m.config.eos_ids == [11, first] and {11, first} <= _stop_ids(m, None)
    assert m.generate(ids, 8) == []  # its first token is now a stop
    if first != 11:
        assert falcon.generate(ids, 8)[:1] == [first]  # and was not before


def test_the_default_model_keeps_the_2b4t_format():
    model = load_model()
    assert ct.is_2b4t_template(model.chat_template)  # the shipped tokenizer_config.json's
    msgs = CONVERSATIONS[2]
    assert chat_prompt(model, msgs) == ("System: Be brief.<|eot_id|>User: Who was Boaz?<|eot_id|>"
                                        "Assistant: A man of Bethlehem.<|eot_id|>User: And?"
                                        "<|eot_id|>Assistant:")


def test_a_missing_template_falls_back_to_2b4t(falcon_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(falcon_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    m = load_model(d)
    assert m.chat_template is None
    assert chat_prompt(m, "Hi") == "User: Hi<|eot_id|>Assistant: "
    assert chat_prompt(None, "Hi") == "User: Hi<|eot_id|>Assistant: "


def test_chat_template_jinja_file_and_named_templates(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"},
                           {"name": "default", "template": "D"}]}))
    assert read_chat_template(tmp_path) == "D"
    (tmp_path / "chat_template.jinja").write_text("J{{ x }}")  # as transformers: the file wins
    assert read_chat_template(tmp_path) == "J{{ x }}"
    (tmp_path / "chat_template.jinja").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_chat_template(tmp_path)


# --- errors and the sandbox -------------------------------------------------------------------

@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}",
    "{{ raise_exception.__globals__ }}",
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",  # immutable: no mutation
    "{{ 'x' * 10000000000 }}",  # 10 GB
])
def test_a_malicious_template_is_refused_by_the_sandbox(falcon, template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(falcon, "chat_template", template)
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="refused by the sandbox"):
        chat_prompt(falcon, msgs)
    assert not (tmp_path / "PWNED").exists() and msgs == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("template, words", [
    ("{% for m in messages %}{{ m.content }", "not valid jinja"),
    ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
     "{% endif %}ok", "raised an error: System role not supported"),
    ("{{ messages[5].content.strip() }}", "raised an error"),
])
def test_template_errors_are_value_errors(falcon, template, words, monkeypatch):
    monkeypatch.setattr(falcon, "chat_template", template)
    with pytest.raises(ValueError, match=words):
        chat_prompt(falcon, CONVERSATIONS[1])


def test_bad_messages_are_value_errors(falcon):
    for bad in ([{"content": "no role"}], ["just a string"], 42):
        with pytest.raises(ValueError, match="role|dict"):
            chat_prompt(falcon, bad)
    with pytest.raises(ValueError, match="role must be system, user or assistant"):
        chat_prompt(None, [{"role": "robot", "content": "x"}])


def test_without_jinja2_2b4t_works_and_others_say_how_to_install(falcon, no_jinja):
    with pytest.raises(ImportError):
        import jinja2  # noqa: F401
    assert chat_prompt(load_model(), "Hi") == "User: Hi<|eot_id|>Assistant:"
    with pytest.raises(ValueError, match="pip install jinja2"):
        chat_prompt(falcon, "Hi")


# --- a hub id ----------------------------------------------------------------------------------

FALCON_ID = "tiiuae/Falcon3-1B-Instruct-1.58bit"


@pytest.fixture
def fake_hub(monkeypatch, falcon_dir):
    """huggingface_hub.snapshot_download answering with the tiny checkpoint; records its calls."""
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(falcon_dir)
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return calls


def test_a_hub_id_is_resolved_through_snapshot_download(fake_hub):
    m = load_model(FALCON_ID, revision="abc123")
    (repo, kw), = fake_hub
    assert repo == FALCON_ID and kw["revision"] == "abc123"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "model.safetensors", "chat_template.jinja"):
        assert any(__import__("fnmatch").fnmatch(name, p) for p in kw["allow_patterns"]), name
    assert m.chat_template == FALCON3_TEMPLATE


def test_cli_chat_with_a_hub_id(fake_hub, falcon, monkeypatch, capsys):
    from bitnet_edu.cli import main
    monkeypatch.setattr(sys, "stdin", io.StringIO("Who was Boaz?\n\n"))
    rc = main(["chat", "--model", FALCON_ID, "-n", "4", "--temperature", "0",
               "--repetition-penalty", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and fake_hub[0][0] == FALCON_ID
    want = falcon.generate(chat_prompt(falcon, "Who was Boaz?"), 4, temperature=0)
    assert out == f"you> bot> {want}\nyou> "


def _one_error_line(capsys, argv):
    from bitnet_edu.cli import main
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("bitnet-edu: error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_no_huggingface_hub_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    line = _one_error_line(capsys, ["chat", "--model", FALCON_ID])
    assert "needs huggingface_hub" in line and "bitnet-edu[hub]" in line
    assert f"huggingface-cli download {FALCON_ID}" in line
    assert "microsoft/BitNet issue #608" not in line  # 2B4T's revision note is 2B4T's


def test_an_unreachable_hub_is_one_clear_line(monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")

    def offline(repo_id, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n" + "x" * 2000)
    monkeypatch.setattr(hub, "snapshot_download", offline)
    line = _one_error_line(capsys, ["chat", "--model", FALCON_ID])
    assert f"could not download '{FALCON_ID}'" in line and "ConnectionError" in line
    assert "huggingface-cli download" in line  # the way out survives the long message


def test_a_broken_template_fails_before_the_first_question(falcon_dir, tmp_path, monkeypatch,
                                                           capsys):
    d = tmp_path / "m"
    shutil.copytree(falcon_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ raise_exception('this model has no system role') }}"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(sys, "stdin", io.StringIO("never read\n"))
    line = _one_error_line(capsys, ["chat", "--model", str(d), "--system", "Be brief."])
    assert "the chat template raised an error: this model has no system role" in line
    assert "bot>" not in capsys.readouterr().out
