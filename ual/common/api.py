"""The chat client of the elicitation stage (backend ``openai``) and the evaluation judge, on the ``openai`` SDK.

The SDK does the transport: the request, authentication, timeouts, typed errors. Our layer keeps the guarantees
the stages rely on:

- The API key comes only from the environment variable named by ``api_key_env``; it is kept in a private
  attribute, sent only in the ``Authorization`` header, and scrubbed from every error text and reply we keep.
- :meth:`ChatClient.chat` never raises for HTTP, network, timeout or reply-format failures: it returns a
  :class:`ChatResult` whose ``error`` says what went wrong. Transient failures (429, 5xx, timeouts, refused or
  dropped connections, truncated or non-JSON bodies) are retried with exponential backoff and jitter, honouring
  ``Retry-After`` / ``retry-after-ms``; other 4xx replies are final at once. The retry loop is ours (the SDK's is
  switched off) because the SDK ignores a ``Retry-After`` above 60 s, retries a non-JSON 200 reply not at all,
  and its waits cannot be capped by ``backoff_max`` or recorded in tests.
- :func:`run_concurrent` runs calls in threads and yields each result as soon as it finishes, so the caller can
  append it to a results file before the next one arrives (a kill then loses only calls still in flight).
"""
from __future__ import annotations

import email.utils
import json
import os
import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ual.common.errors import InputError

T = TypeVar("T")
R = TypeVar("R")

REDACTED = "[redacted]"
_ERROR_BODY_CHARS = 300  # enough of an error body to tell what the server said, short enough for a log line


@dataclass
class ChatResult:
    """One chat-completions call after all its attempts.

    ``text``: the first choice's message content ("" on error). ``usage``: the reply's token counts
    (``prompt_tokens``, ``completion_tokens``, ``total_tokens``; empty on error). ``error``: None, or a reason
    such as ``"http 500: ..."``, ``"timeout after 60s"``, ``"bad reply: not JSON"``. ``raw``: the parsed reply
    body (None when there was none). ``logprobs``: ``choices[0].logprobs.content`` (a list of
    ``{"token", "logprob", "top_logprobs": [...]}``) when requested and returned. ``attempts``: requests sent.
    """

    text: str = ""
    usage: dict = field(default_factory=dict)
    error: str | None = None
    raw: dict | None = None
    logprobs: list | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Retryable(Exception):
    """A failure worth another attempt; ``retry_after`` is the server's requested wait in seconds, if any."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Final(Exception):
    """A failure that another attempt would not fix (most 4xx, a reply without choices)."""


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (milliseconds) or ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """Chat-completions client for one endpoint and model.

    ``base_url``: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1`` (the SDK appends
    ``/chat/completions``). ``api_key_env``: name of the environment variable holding the key; it must be set and non-empty,
    unless ``api_key_env`` is ``""`` or None (servers without authentication: no header is sent).
    ``timeout``: seconds per request (connect and each read). ``max_retries``: extra attempts after the first.
    Backoff before retry n (1-based) is ``min(backoff_max, backoff_base * 2**(n-1))`` times a jitter factor in
    [0.5, 1]; a server's ``Retry-After`` replaces it (capped at ``backoff_max``).
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 6, backoff_base: float = 1.0, backoff_max: float = 60.0):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise InputError(None, None, "base_url", f"must start with http:// or https://, got {base_url!r}")
        if not model:
            raise InputError(None, None, "model", "is empty")
        if timeout <= 0 or max_retries < 0 or backoff_base < 0 or backoff_max < 0:
            raise InputError(None, None, "timeout", "timeout must be > 0; max_retries and backoff must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env or None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self._key: str | None = None
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env, "")
            if not key.strip():
                raise InputError(None, None, "api_key_env", f"environment variable {self.api_key_env} is not set or "
                                 "empty (the key is read only from the environment; use an empty api_key_env for "
                                 "a server without authentication)")
            self._key = key.strip()
        self._sleep: Callable[[float], None] = time.sleep  # tests replace it to record waits
        self._client = None  # the openai.OpenAI instance, made on the first call

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # ------------------------------------------------------------------------------------------ public

    def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int | None = None,
             logprobs: bool = False, top_logprobs: int | None = None) -> ChatResult:
        """Send ``messages`` (``[{"role", "content"}]``) and return the first choice, retrying transient failures."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        if logprobs:
            body["logprobs"] = True
            if top_logprobs is not None:
                body["top_logprobs"] = int(top_logprobs)
        result = ChatResult()
        for attempt in range(1, self.max_retries + 2):
            result.attempts = attempt
            try:
                reply = self._post(body)
                return self._result_from(reply, attempt)
            except _Final as e:
                result.error = self._scrub(str(e))
                return result
            except _Retryable as e:
                result.error = self._scrub(e.reason)
                if attempt > self.max_retries:
                    result.error = f"{result.error} (gave up after {attempt} attempts)"
                    return result
                self._sleep(self._delay(attempt, e.retry_after))
        return result  # not reached: the loop returns on its last attempt

    # ------------------------------------------------------------------------------------------ internals

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max, retry_after)
        base = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)

    def _scrub(self, text: str) -> str:
        if self._key and text:
            text = text.replace(self._key, REDACTED)
        return text

    def _openai(self):
        import openai

        if self._client is None:
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self._key or "unused", timeout=self.timeout,
                                         max_retries=0)
        return self._client

    def _post(self, body: dict) -> dict:
        import openai

        try:
            # a server without authentication gets no Authorization header at all
            extra = {} if self._key else {"extra_headers": {"Authorization": openai.Omit()}}
            raw = self._openai().chat.completions.with_raw_response.create(**body, **extra)
            payload = raw.http_response.content
        except openai.APIStatusError as e:
            detail = (e.response.text if e.response is not None else str(e))[:_ERROR_BODY_CHARS]
            reason = f"http {e.status_code}: {detail}".strip()
            if e.status_code == 429 or 500 <= e.status_code < 600:
                raise _Retryable(reason, parse_retry_after(e.response.headers if e.response is not None else None)) \
                    from None
            raise _Final(reason) from None
        except openai.APITimeoutError:
            raise _Retryable(f"timeout after {self.timeout:g}s") from None
        except openai.APIConnectionError as e:
            # refused, reset or dropped connections and truncated bodies: all transient from our side
            cause = e.__cause__ or e
            raise _Retryable(f"connection error: {type(cause).__name__}: {cause}") from None
        try:
            reply = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Retryable(f"bad reply: not JSON ({len(payload)} bytes)") from None
        if not isinstance(reply, dict):
            raise _Retryable("bad reply: JSON is not an object")
        return reply

    def _result_from(self, reply: dict, attempt: int) -> ChatResult:
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Final("bad reply: no choices[0].message.content") from None
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise _Final(f"bad reply: message content is {type(text).__name__}, expected a string")
        usage = reply.get("usage") or {}
        usage = {k: int(v) for k, v in usage.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        lp = choice.get("logprobs")
        lp_content = lp.get("content") if isinstance(lp, dict) else None
        return ChatResult(text=self._scrub(text), usage=usage, error=None, raw=reply, logprobs=lp_content,
                          attempts=attempt)


def run_concurrent(fn: Callable[[T], R], items: Iterable[T], concurrency: int, progress: bool = True,
                   *, desc: str | None = None) -> Iterator[tuple[T, R]]:
    """Call ``fn(item)`` in up to ``concurrency`` threads; yield ``(item, result)`` pairs as they finish.

    At most ``concurrency`` calls are in flight (items are submitted as slots free up), so stopping the
    iteration early (an exception in the caller, Ctrl-C) wastes at most the calls already running; those are
    left to finish in their threads and their results are dropped. ``fn`` should not raise (an exception is
    re-raised here). ``progress`` shows a tqdm bar over the items (total known when ``items`` has a length).
    """
    if concurrency < 1:
        raise InputError(None, None, "concurrency", f"must be >= 1, got {concurrency}")
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True)
    it = iter(items)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ual-api")
    running: dict[Future, T] = {}
    try:
        for item in it:
            running[pool.submit(fn, item)] = item
            if len(running) >= concurrency:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                item = running.pop(fut)
                result = fut.result()
                if bar is not None:
                    bar.update(1)
                yield item, result
                nxt = next(it, _END)
                if nxt is not _END:
                    running[pool.submit(fn, nxt)] = nxt
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()


_END = object()
