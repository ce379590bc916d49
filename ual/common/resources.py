"""Peak memory of work done in child processes (papermill kernels), sampled while it runs.

``resource.getrusage(RUSAGE_CHILDREN)`` only reports the largest child that has *ever* exited, so it cannot give
one stage's peak when several stages run from the same runner; sampling the process tree can.
"""
from __future__ import annotations

import os
import threading


class PeakRSS:
    """Context manager: the largest summed resident set size (GiB) of this process's descendants, sampled every
    ``interval`` seconds while the block runs. ``peak_gib`` is None where psutil is unavailable."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak_gib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        me = psutil.Process(os.getpid())
        peak = 0
        while True:
            total = 0
            try:
                for child in me.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:  # exited between listing and reading
                        pass
            except psutil.Error:
                pass
            peak = max(peak, total)
            self.peak_gib = round(peak / 2**30, 3)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRSS":
        try:
            import psutil  # noqa: F401
        except ImportError:
            return self
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
