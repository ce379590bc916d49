"""The paper's elicitation backend: an OpenAI-compatible chat endpoint rates each sample 0-99."""
from __future__ import annotations

from typing import Iterator, Sequence

from ual.common.errors import InputError
from ual.data.records import Record
from ual.elicit.backends.base import ERROR, OK, PARSE_FAILURE, Backend
from ual.elicit.config import ElicitConfig
from ual.elicit.prompt import load_prompt, parse_score, rating_messages


class OpenAIBackend(Backend):
    """The paper's elicitation: one chat call per sample, temperature 0, the 0-99 prompt, the reply parsed."""

    name = "openai"
    scale = "0-99 rating (parsed from the reply)"

    def __init__(self, cfg: ElicitConfig):
        from ual.common.api import ChatClient

        if not cfg.model:
            raise InputError(None, None, "model", "the openai backend needs --model (paper: gpt-4-1106-preview)")
        self.cfg = cfg
        self.model = cfg.model
        self.prompt = load_prompt(cfg.prompt_file)
        self.prompt_version = self.prompt.version
        self.client = ChatClient(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                                 max_retries=cfg.max_retries, backoff_base=cfg.backoff_base,
                                 backoff_max=cfg.backoff_max)

    def settings(self) -> dict:
        return {"base_url": self.client.base_url, "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens}

    def _score_one(self, record: Record) -> dict:
        res = self.client.chat(rating_messages(self.prompt, record.messages), temperature=self.cfg.temperature,
                               max_tokens=self.cfg.max_tokens)
        row = {"id": record.id, "score": None, "status": ERROR, "error": res.error, "raw": res.text or None,
               "usage": res.usage, "attempts": res.attempts}
        if res.error is None:
            parsed = parse_score(res.text)
            if parsed.score is None:
                row.update(status=PARSE_FAILURE, error=f"parse failure: {parsed.reason}")
            else:
                row.update(score=parsed.score, status=OK)
        return row

    def run(self, records: Sequence[Record], progress: bool) -> Iterator[dict]:
        from ual.common.api import run_concurrent

        for _, row in run_concurrent(self._score_one, list(records), self.cfg.concurrency, progress=progress,
                                     desc="elicit openai"):
            yield row
