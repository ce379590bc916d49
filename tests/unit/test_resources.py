import subprocess
import sys

from ual.common.resources import PeakRSS


def test_peak_rss_sees_a_child_allocation():
    code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    with PeakRSS(interval=0.1) as peak:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert peak.peak_gib is not None and peak.peak_gib >= 0.25


def test_peak_rss_without_children_is_zero():
    with PeakRSS(interval=0.05) as peak:
        pass
    assert peak.peak_gib == 0.0
