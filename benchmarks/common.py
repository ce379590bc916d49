"""Measurement helpers shared by the benchmarks: side-by-side timing, peak memory in a fresh process, machine facts.

Peak memory (CPU): each (benchmark, case, method) runs in a fresh ``python -m benchmarks.common`` subprocess. The
child builds the inputs, runs the step once (warm-up: lazy library state, thread pools), frees the step's outputs,
resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM``), reads ``VmRSS`` as the
baseline, runs the step once more and reads ``VmHWM``. ``peak - baseline`` is the extra resident memory the step
needed at its worst moment, the gradient it produces included, the inputs excluded. Large tensors come from mmap in
glibc and go back to the kernel on free, so a fresh process per measurement avoids allocator caching across methods.

Timing: all methods of one case run in the same process, interleaved (the order rotates each repetition), and the
ratio to the baseline method is taken per repetition, then the median: load from other processes on this shared
machine then hits both sides of a ratio alike.
"""
from __future__ import annotations

import datetime as _dt
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
GiB = 2 ** 30


def machine() -> dict:
    """CPU model, core count, memory, torch version and threads, date: recorded with every result."""
    import torch

    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "mem_total_gib": round(_meminfo("MemTotal") / GiB, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def mem_available() -> int:
    """Bytes the kernel says can be allocated now without swapping (MemAvailable)."""
    return _meminfo("MemAvailable")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def time_side_by_side(steps: dict[str, Callable[[], None]], baseline: str, reps: int, *,
                      sync: Callable[[], None] | None = None, deadline: float | None = None) -> dict[str, dict]:
    """Median seconds per step and median per-repetition ratio to ``baseline``, steps interleaved in one process.

    ``sync``: called after each step inside the timed region (``torch.cuda.synchronize`` on a GPU, whose kernels run
    asynchronously). ``deadline``: a ``time.perf_counter()`` value; repetitions stop once it has passed (at least one
    is always done), and ``reps_done`` says how many ran. Each method's entry also lists the per-repetition ratios.
    """
    names = list(steps)

    def run(n):
        steps[n]()
        if sync is not None:
            sync()

    for n in names:
        run(n)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        if r and deadline is not None and time.perf_counter() > deadline:
            break
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            gc.collect()
            t0 = time.perf_counter()
            run(n)
            times[n].append(time.perf_counter() - t0)
    out = {}
    for n in names:
        ratios = [t / b for t, b in zip(times[n], times[baseline])]
        out[n] = {"seconds": statistics.median(times[n]), "seconds_all": times[n],
                  "time_ratio": statistics.median(ratios), "ratios_all": ratios, "reps_done": len(times[n])}
    return out


def peak_memory(module: str, method: str, **case) -> int:
    """Extra peak resident bytes of one step of ``module.make_step(method, **case)``, measured in a fresh process."""
    spec = json.dumps({"module": module, "method": method, "case": case})
    # A fixed mmap threshold turns off glibc's dynamic one, which after the warm-up step would serve the step's
    # mid-sized tensors (up to 32 MiB) from heap pages already counted in the baseline, hiding them from the peak.
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_=os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.common", spec], capture_output=True, text=True,
                          env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed for {module}:{method} {case}:\n{proc.stderr[-3000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def _probe(spec: dict) -> dict:
    mod = importlib.import_module(spec["module"])
    step = mod.make_step(spec["method"], **spec["case"])
    step()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    step()
    peak = _status("VmHWM")
    return {"peak_extra_bytes": peak - base, "baseline_rss_bytes": base}


if __name__ == "__main__":
    print(json.dumps(_probe(json.loads(sys.argv[1]))))
