"""A non-editable install runs the pipeline from any directory: the wheel carries notebooks, profiles and data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_install_runs_the_tiny_profile_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO),
                    "-w", str(wheels)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("ual-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ual/notebooks/02_train.ipynb" in names and "ual/profiles/tiny.yaml" in names
    assert "ual/_data/alpaca_eval/length_controlled_v1_weights.csv" in names
    # Installed into its own folder, which shadows the checkout's editable install on sys.path; the dependencies
    # come from the running environment (installing torch again would only measure the network).
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import ual; print(ual.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where
    r = subprocess.run([sys.executable, "-m", "ual", "run", "--profile", "tiny"], env=env, cwd=work,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((work / "runs" / "tiny" / "manifest.json").read_text())
    assert all(s["status"] == "complete" for s in manifest["stages"].values())
    assert (work / "runs" / "tiny" / "figures" / "method_comparison.png").exists()
