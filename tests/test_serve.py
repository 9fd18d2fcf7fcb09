"""`bitnet-edu serve`: the official `openai` client against a real uvicorn server on 127.0.0.1,
streaming and not; many concurrent clients get exactly their sequential greedy answers; the
limits (401, 404, 400, 413, 429 + Retry-After, timeout 504, disconnect); /metrics parsed by
prometheus-client; JSON logs without prompt text."""

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import bitnet_edu  # noqa: E402
from bitnet_edu.generate import chat_prompt  # noqa: E402
from bitnet_edu.serve.app import _StopText  # noqa: E402
from bitnet_edu.serve.background import BackgroundServer  # noqa: E402
from bitnet_edu.serve.limits import RateLimiter, client_hash  # noqa: E402

NAME = "test-model"


@pytest.fixture(scope="module")
def model():
    return bitnet_edu.load_model()


class Server(BackgroundServer):
    def __init__(self, model, **cfg):
        super().__init__(model, model_name=NAME, **cfg)

    def client(self, key="none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)


@pytest.fixture(scope="module")
def server(model):
    s = Server(model, rate_per_min=0)
    yield s
    s.stop()


def test_models_health_and_page(server):
    assert [m.id for m in server.client().models.list().data] == [NAME]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == NAME
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and NAME in page.text


def test_completion_is_the_engines_greedy_answer(server, model):
    c = server.client()
    pieces = [ch.choices[0].text for ch in c.completions.create(
        model=NAME, prompt="In the beginning", max_tokens=20, temperature=0, stream=True)]
    r = c.completions.create(model=NAME, prompt="In the beginning", max_tokens=20, temperature=0)
    assert r.choices[0].text == model.generate("In the beginning", 20)
    assert r.usage.prompt_tokens == len(model.encode("In the beginning")) + 1  # + bos
    assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"
    assert "".join(pieces) == r.choices[0].text and len(pieces) > 5  # streamed in pieces


def test_chat_completion_streaming_and_not(server, model):
    c = server.client()
    msgs = [{"role": "user", "content": "Who made the heaven and the earth?"}]
    want = model.generate(chat_prompt(model, msgs), 24)
    r = c.chat.completions.create(model=NAME, messages=msgs, max_tokens=24, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    chunks = list(c.chat.completions.create(model=NAME, messages=msgs, max_tokens=24,
                                            temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_seeded_sampling_is_reproducible_and_matches_the_engine(server, model):
    c = server.client()
    kw = dict(model=NAME, prompt="And God said", max_tokens=16, temperature=0.8, top_p=0.9, seed=5)
    a, b = c.completions.create(**kw), c.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text == model.generate(
        "And God said", 16, temperature=0.8, top_p=0.9, seed=5)


def test_32_concurrent_clients_get_exactly_their_answers(server, model):
    prompts = [f"{w} the LORD" for w in ("And", "Then", "So", "For", "But", "Now", "When", "Thus")]
    want = {p: model.generate(p, 12) for p in prompts}

    def student(k):
        c = server.client(key=f"student-{k}")
        out = []
        for j in range(4):
            p = prompts[(k + j) % len(prompts)]
            if j % 2:
                text = "".join(ch.choices[0].text for ch in c.completions.create(
                    model=NAME, prompt=p, max_tokens=12, temperature=0, stream=True,
                    extra_body={"seed": k}))  # greedy: the seed is never read
            else:
                text = c.completions.create(model=NAME, prompt=p, max_tokens=12,
                                            temperature=0, extra_body={"top_k": 1 + j}).choices[0].text
            out.append((p, text))
        return out

    with ThreadPoolExecutor(32) as pool:
        results = [r for rs in pool.map(student, range(32)) for r in rs]
    assert len(results) == 128
    for p, text in results:
        assert text == want[p], f"{p!r}: got {text!r}"
    assert max(server.scheduler.batch_sizes) > 1  # they really were batched


def test_stop_strings_cut_the_text(server, model):
    full = model.generate("In the beginning", 30)
    word = full.split()[3]
    r = server.client().completions.create(model=NAME, prompt="In the beginning", max_tokens=30,
                                           temperature=0, stop=[word])
    assert r.choices[0].text == full[:full.index(word)] and r.choices[0].finish_reason == "stop"
    st = _StopText(["END"])
    assert st.add("abcE") == "ab" and st.add("N") == "c" and st.add("Dxyz") == "" and st.hit
    assert st.text == "abc"  # never a half-sent stop string


def test_bad_requests_are_openai_errors_before_any_compute(server, model):
    c = server.client()
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.completions.create(model=NAME, prompt="x", temperature=5)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.completions.create(model="gpt-4", prompt="x")
    long = "And " * 400  # beyond the 256-token context of the default model
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=NAME, prompt=long, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    r = httpx.post(server.url + "/v1/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(server.url + "/v1/completions",
                     json={"model": NAME, "prompt": "a" * 100_000})
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": NAME, "messages": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_rate_limit_429_with_retry_after(model):
    s = Server(model, rate_per_min=6, burst=2)
    try:
        codes = [httpx.post(s.url + "/v1/completions", json={"model": NAME, "prompt": "a",
                                                             "max_tokens": 1}) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert int(codes[2].headers["retry-after"]) >= 1
        assert codes[2].json()["error"]["type"] == "rate_limit_error"
        fake = httpx.post(s.url + "/v1/completions", headers={"Authorization": "Bearer made-up"},
                          json={"model": NAME, "prompt": "a", "max_tokens": 1})
        assert fake.status_code == 429  # a made-up token is not a new client
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as c2:
            other = c2.post(s.url + "/v1/completions", json={"model": NAME, "prompt": "a",
                                                             "max_tokens": 1})
        assert other.status_code == 200  # another address has its own bucket
        m = s.metrics()
        assert m[("bitnet_edu_requests_total", (("endpoint", "completions"), ("status", "429")))] == 2
    finally:
        s.stop()
    t = [0.0]
    lim = RateLimiter(60, 1, clock=lambda: t[0])
    assert lim.allow("a") == 0 and lim.allow("a") == pytest.approx(1.0)
    t[0] = 1.0
    assert lim.allow("a") == 0


def test_api_key(model):
    s = Server(model, api_key="sekret", rate_per_min=0)
    try:
        with pytest.raises(openai.AuthenticationError, match="API key"):
            s.client(key="wrong").completions.create(model=NAME, prompt="a", max_tokens=1)
        ok = s.client(key="sekret").completions.create(model=NAME, prompt="a", max_tokens=1)
        assert ok.usage.completion_tokens == 1
        assert httpx.get(s.url + "/health").status_code == 200  # health needs no key
    finally:
        s.stop()


def test_timeout_and_disconnect_free_the_slot(model):
    s = Server(model, rate_per_min=0, timeout_s=0.002, max_new_tokens=250, cache_size=0)
    try:
        r = httpx.post(s.url + "/v1/completions", json={"model": NAME, "prompt": "In the",
                                                        "max_tokens": 250, "temperature": 0.9})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        m = s.metrics()  # counted once, where it happened
        assert m[("bitnet_edu_requests_total", (("endpoint", "completions"), ("status", "504")))] == 1
    finally:
        s.stop()
    s = Server(model, rate_per_min=0, max_new_tokens=250, cache_size=0)
    try:
        with httpx.stream("POST", s.url + "/v1/completions",
                          json={"model": NAME, "prompt": "In the", "max_tokens": 250,
                                "temperature": 0.9, "stream": True}) as r:
            next(r.iter_lines())  # the first event, then hang up
        sched = s.scheduler
        deadline = time.time() + 10
        while sched.pending and time.time() < deadline:
            time.sleep(0.02)
        assert sched.pending == 0  # the cancelled request left the batch
    finally:
        s.stop()


def test_metrics_and_logs(server, caplog):
    c = server.client()
    with caplog.at_level(logging.INFO, logger="bitnet_edu.serve"):
        for _ in range(2):  # the second is a response-cache hit
            c.completions.create(model=NAME, prompt="Blessed are the meek", max_tokens=8,
                                 temperature=0)
    m = server.metrics()
    ok = m[("bitnet_edu_requests_total", (("endpoint", "completions"), ("status", "200")))]
    assert ok >= 2
    assert m[("bitnet_edu_response_cache_total", (("result", "hit"),))] >= 1
    assert m[("bitnet_edu_time_to_first_token_seconds_count", (("endpoint", "completions"),))] >= 2
    assert m[("bitnet_edu_request_latency_seconds_count", (("endpoint", "completions"),))] >= 2
    assert ("bitnet_edu_queue_depth", ()) in m and ("bitnet_edu_batch_size_count", ()) in m
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bitnet_edu.serve"]
    assert lines and all("Blessed" not in json.dumps(x) for x in lines)  # no prompt text
    assert all(len(x["client"]) == 12 and x["client"] == client_hash("ip:127.0.0.1")
               for x in lines)


def test_serve_cli_refuses_bad_arguments(capsys):
    from bitnet_edu.cli import main
    assert main(["serve", "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err


def test_students_chat_widget_talks_to_the_server(server, model):
    from bitnet_edu.serve.client import RemoteModel
    from bitnet_edu.widgets import ChatWidget

    remote = RemoteModel(server.url)
    assert remote.model == NAME
    assert remote.generate("In the beginning", 10) == model.generate("In the beginning", 10)
    w = ChatWidget(url=server.url, max_new_tokens=8, temperature=0.0)
    reply = w.send("And God said")
    assert reply is not None and reply.text == model.generate("And God said", 8)
    assert "And God said" in w.transcript.value
    from bitnet_edu.deploy import Limits
    bad = ChatWidget(url=server.url, limits=Limits(max_new_tokens=5000))  # only the server checks
    bad.controls["max_new_tokens"].max = 5000
    bad.controls["max_new_tokens"].value = 4000  # over the server's context: its 400, shown
    assert bad.send("Amen") is None and "server said 400" in bad.status.value
    with pytest.raises(ValueError, match="cannot reach"):
        RemoteModel("http://127.0.0.1:9")


def test_a_model_without_tokenizer_takes_ids_and_refuses_text():
    tiny = bitnet_edu.random_model(dict(vocab_size=300, hidden_size=128, intermediate_size=256,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, max_position_embeddings=64), seed=0)
    s = Server(tiny, rate_per_min=0)
    try:
        r = httpx.post(s.url + "/v1/completions", json={"model": NAME, "prompt": "hello"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        r = httpx.post(s.url + "/v1/completions", json={"model": NAME, "prompt": [1, 2, 3],
                                                        "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        want = tiny.generate([1, 2, 3], 3, temperature=0)
        assert r.json()["choices"][0]["text"] == "".join(f"<{i}>" for i in want)
        r = httpx.post(s.url + "/v1/completions", json={"model": NAME, "prompt": [1, 999]})
        assert r.status_code == 400 and "[0, 300)" in r.json()["error"]["message"]
    finally:
        s.stop()
