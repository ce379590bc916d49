"""Kill/restart: ``python -m ual elicit`` (openai backend, fake server) killed with SIGKILL at several moments and
restarted ends with every sample scored, and no sample finished before a kill is ever sent again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai import FakeOpenAI  # noqa: E402

from ual.data.records import Record, save_records  # noqa: E402
from ual.common.io import read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-SENTINEL-resume-13579"
N = 60
CONCURRENCY = 4


def _responder(prompt: str) -> str:
    time.sleep(0.03)  # slow enough that a kill lands mid-run
    i = int(prompt.split("item")[1].split("x")[0])
    return f"Score: {i % 100}"


def _cmd(data: Path, out: Path, base_url: str) -> list[str]:
    return [sys.executable, "-m", "ual", "elicit", "--data", str(data), "--output", str(out), "--backend", "openai",
            "--model", "fake-model", "--base-url", base_url, "--api-key-env", "UAL_TEST_KEY", "--concurrency",
            str(CONCURRENCY), "--backoff-base", "0.001", "--timeout", "5", "--no-progress"]


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.reliability
def test_sigkill_and_restart_sends_no_finished_sample_twice(tmp_path):
    recs = [Record(f"s{i}", "x", [{"role": "user", "content": f"item{i}x"}, {"role": "assistant", "content": "a"}])
            for i in range(N)]
    data, out = tmp_path / "data.jsonl", tmp_path / "scores.jsonl"
    save_records(data, recs)
    env = dict(os.environ, UAL_TEST_KEY=KEY, PYTHONPATH=str(REPO))
    frozen: dict[str, int] = {}  # id -> request count when it was first seen finished in the file
    with FakeOpenAI(responder=_responder) as server:
        for kill_after in (8, 25, 41):
            proc = subprocess.Popen(_cmd(data, out, server.base_url), cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while _count_lines(out) < kill_after and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            for row in read_jsonl(out):
                frozen.setdefault(row["id"], server.count(f"item{row['id'][1:]}x"))
        done = subprocess.run(_cmd(data, out, server.base_url), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        counts = {r.id: server.count(f"item{r.id[1:]}x") for r in recs}
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert set(rows) == {r.id for r in recs}
    assert all(rows[f"s{i}"]["score"] == float(i % 100) for i in range(N))
    assert len(frozen) >= 25
    for rid, seen in frozen.items():  # finished before a kill: never sent again
        assert counts[rid] == seen  # (seen > 1 only for samples in flight at an earlier kill)
    # only requests in flight at a kill are repeated
    assert sum(counts.values()) <= N + 3 * CONCURRENCY
    assert KEY not in out.read_text() and KEY not in done.stdout + done.stderr
