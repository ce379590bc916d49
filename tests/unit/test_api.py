"""ual.common.api: the chat client against the fake OpenAI server, with injected faults."""
from __future__ import annotations

import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai import FakeOpenAI, drop_connection, http_error, not_json, reply, slow, truncated  # noqa: E402

from ual.common.api import ChatClient, parse_retry_after, run_concurrent  # noqa: E402
from ual.common.errors import InputError  # noqa: E402

KEY = "sk-SENTINEL-api-0123456789"


@pytest.fixture
def server():
    with FakeOpenAI(responder=lambda p: "Score: 42") as s:
        yield s


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.setenv("UAL_TEST_KEY", KEY)
    c = ChatClient(server.base_url, "fake-model", api_key_env="UAL_TEST_KEY", timeout=0.5, max_retries=3,
                   backoff_base=0.001, backoff_max=5.0)
    c.waits = []
    c._sleep = c.waits.append  # record the backoff instead of sleeping
    return c


def ask(client, text="hello"):
    return client.chat([{"role": "user", "content": text}])


def test_ok_reply_usage_and_auth_header(client, server):
    r = ask(client)
    assert (r.text, r.error, r.attempts) == ("Score: 42", None, 1)
    assert r.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert server.auth_headers == [f"Bearer {KEY}"]
    assert server.requests[0]["temperature"] == 0.0 and server.requests[0]["model"] == "fake-model"
    assert "logprobs" not in server.requests[0]


@pytest.mark.parametrize("fault", [http_error(500), http_error(503), http_error(429), not_json(), truncated(),
                                   drop_connection(), slow(1.0)])
def test_transient_faults_are_retried(client, server, fault):
    server.script("hello", fault)
    r = ask(client)
    assert r.error is None and r.text == "Score: 42" and r.attempts == 2
    assert server.count("hello") == 2


def test_retry_after_seconds_and_exponential_backoff(client, server):
    server.script("hello", http_error(429, retry_after="2"), http_error(500), http_error(500))
    r = ask(client)
    assert r.ok and r.attempts == 4
    assert client.waits[0] == 2.0  # Retry-After honoured exactly
    # then exponential with jitter in [0.5, 1] x base * 2**(n-1)
    assert 0.5 * 0.002 <= client.waits[1] <= 0.002 and 0.5 * 0.004 <= client.waits[2] <= 0.004


def test_retry_after_http_date_and_ms():
    future = formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after({"Retry-After": future}) <= 31
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert parse_retry_after({"Retry-After": "garbage"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_is_capped(client, server):
    server.script("hello", http_error(429, retry_after="600"))
    assert ask(client).ok and client.waits == [5.0]


def test_other_4xx_is_final(client, server):
    server.script("hello", http_error(400, body='{"error": "bad request"}'))
    r = ask(client)
    assert r.attempts == 1 and r.error.startswith("http 400") and r.text == ""
    assert server.count("hello") == 1


def test_gives_up_after_max_retries(client, server):
    server.script("hello", *[http_error(502)] * 10)
    r = ask(client)
    assert r.attempts == 4 and "gave up after 4 attempts" in r.error and "http 502" in r.error
    assert len(client.waits) == 3


def test_key_is_scrubbed_from_errors_and_repr(client, server):
    server.script("hello", http_error(401, body=f'{{"error": "Incorrect API key provided: {KEY}"}}'))
    r = ask(client)
    assert KEY not in r.error and "[redacted]" in r.error
    assert KEY not in repr(client)


def test_missing_key_env_is_an_input_error(monkeypatch, server):
    monkeypatch.delenv("UAL_NO_SUCH_KEY", raising=False)
    with pytest.raises(InputError, match="UAL_NO_SUCH_KEY"):
        ChatClient(server.base_url, "m", api_key_env="UAL_NO_SUCH_KEY")
    c = ChatClient(server.base_url, "m", api_key_env="")  # no auth
    assert c.chat([{"role": "user", "content": "x"}]).ok
    assert server.auth_headers == [None]


def test_logprobs_requested_and_returned(client, server):
    lp = [{"token": "A", "logprob": -0.2, "top_logprobs": [{"token": "A", "logprob": -0.2},
                                                           {"token": "B", "logprob": -1.8}]}]
    server.script("judge", reply("A", logprobs=lp))
    r = client.chat([{"role": "user", "content": "judge this"}], logprobs=True, top_logprobs=2, max_tokens=1)
    assert r.logprobs == lp
    body = server.requests[-1]
    assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["max_tokens"] == 1
    r2 = client.chat([{"role": "user", "content": "other"}], logprobs=True, top_logprobs=3)
    assert len(r2.logprobs[0]["top_logprobs"]) == 3  # the server's default logprobs


def test_unreachable_server_is_an_error_not_an_exception(monkeypatch):
    monkeypatch.setenv("UAL_TEST_KEY", KEY)
    c = ChatClient("http://127.0.0.1:9", "m", api_key_env="UAL_TEST_KEY", timeout=0.5, max_retries=1,
                   backoff_base=0.0)
    r = c.chat([{"role": "user", "content": "x"}])
    assert r.attempts == 2 and r.error.startswith("connection error")


def test_run_concurrent_bounds_in_flight_and_yields_all():
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def fn(x):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return x * x

    out = dict(run_concurrent(fn, list(range(20)), 3, progress=False))
    assert out == {x: x * x for x in range(20)} and state["max"] <= 3


def test_run_concurrent_stops_submitting_when_closed():
    calls = []
    gen = run_concurrent(lambda x: calls.append(x) or x, list(range(100)), 2, progress=False)
    next(gen)
    gen.close()
    time.sleep(0.05)
    assert len(calls) <= 4
