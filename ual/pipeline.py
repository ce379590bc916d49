"""Run the stage notebooks end to end with papermill, as one parameterised, resumable pipeline.

A profile (``profiles/<name>.yaml``) has one section per stage (``data``, ``elicit``, ``train``, ``evaluate``,
``figures``) holding only what differs from the stage config's defaults, plus an optional ``run`` section
(``run_id``, ``description``). ``python -m ual run --profile NAME`` resolves every section into its config
dataclass (an unknown key or a wrong type stops the run before any work), then executes
``notebooks/00_data.ipynb`` ... ``04_figures.ipynb`` into ``runs/<run-id>/notebooks/`` with the resolved values
injected, and keeps ``runs/<run-id>/manifest.json`` (profile, resolved parameters, git commit, package versions,
seeds, times, per-stage status and input fingerprint). Rerunning a run id skips stages that completed with the
same inputs; a failed stage keeps its executed notebook and the runner says how to resume.

Secrets never become parameters: API keys are read from environment variables by the stages themselves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ual.common.config import (_type_name, _type_ok, build_config, did_you_mean, from_params, load_yaml,
                               parse_override, setting)
from ual.common.errors import InputError
from ual.common.paths import data_root, notebooks_dir, profiles_dir, resolve_data_path
from ual.common.resources import PeakRSS

NOTEBOOKS = notebooks_dir()  # shipped with the package (a link to the checkout's notebooks/)
PROFILES = profiles_dir()
KERNEL_NAME = "ual"
STAGES = ("data", "elicit", "train", "evaluate", "figures")
NOTEBOOK_OF = {"data": "00_data.ipynb", "elicit": "01_elicit.ipynb", "train": "02_train.ipynb",
               "evaluate": "03_evaluate.ipynb", "figures": "04_figures.ipynb"}
# Where a stage notebook's default differs from its Config's, so that Run All in JupyterLab works offline (the
# pipeline injects every value, so runs are unaffected): elicitation defaults to the API rater, which needs a key.
NOTEBOOK_DEFAULTS: dict[str, dict] = {"elicit": {"backend": "likelihood", "model": "smollm2-135m"}}
# A setting whose name says it holds a secret (api_key, openai_api_key, auth_token, password...) is refused;
# naming the environment variable that holds one (api_key_env) is how secrets are passed.
SECRET_KEY = re.compile(r"(^|_)(api_?key|secret|password|token)$", re.IGNORECASE)


# A run id is a name, never a path: one folder under the runs root, of safe characters, starting with a letter or
# digit (so never "." or ".."), always a string.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_id(run_id: Any, source: str | Path | None = "--run-id") -> str:
    """``run_id`` if it is a valid name; else an InputError naming ``source``."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise InputError(source, None, "run_id", f"must be a name of letters, digits, '.', '_' and '-' starting "
                         f"with a letter or digit (at most 100 characters), got {run_id!r}")
    return run_id


@dataclass
class RunConfig:
    """The ``run`` section of a profile."""

    run_id: str | None = setting(None, "folder under the runs root (a name, not a path); null is the profile name.")
    description: str = setting("", "one line on what the run is for (kept in the manifest).")

    def __post_init__(self) -> None:
        if self.run_id is not None:
            check_run_id(self.run_id, None)


def stage_config_classes() -> dict[str, type]:
    """The config dataclass of each stage (imports the stage modules)."""
    import ual.data
    import ual.elicit
    import ual.evaluate
    import ual.figures
    import ual.train

    return {"data": ual.data.Config, "elicit": ual.elicit.Config, "train": ual.train.Config,
            "evaluate": ual.evaluate.Config, "figures": ual.figures.Config}


def stage_config(cls: type[T], namespace: dict, *, stage: str) -> T:
    """The config of a stage notebook: from its parameters (``namespace``, i.e. ``globals()``), or, when the
    ``profile`` parameter names one, from that profile's section for ``stage`` (so a hand run equals the
    pipeline's)."""
    profile = namespace.get("profile") or ""
    if profile:
        return resolve_profile(profile).stages[stage]
    return from_params(cls, namespace)


def profile_path(name_or_path: str) -> Path:
    """``profiles/<name>.yaml`` for a bare name, else the path itself."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or p.is_symlink():
        if not p.exists() and not p.is_symlink():
            raise InputError(p, None, None, "profile file not found")
        return p  # a broken link or a link loop is reported by the guarded reader, with what is wrong
    p = PROFILES / f"{name_or_path}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in PROFILES.glob("*.yaml"))
        raise InputError(p, None, None, f"no such profile; known: {', '.join(known)}")
    return p


@dataclass
class ResolvedProfile:
    """A profile with every stage section turned into its config dataclass."""

    name: str
    path: Path
    run: RunConfig
    stages: dict[str, Any]
    overrides: list[str] = dataclasses.field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run.run_id or self.name

    def params(self, stage: str) -> dict:
        """The parameters papermill injects into a stage notebook (JSON-ready)."""
        return dataclasses.asdict(self.stages[stage])


MAX_EXTENDS = 8  # profiles extending profiles: deeper chains are almost surely a loop


def load_profile_raw(path: Path, _chain: tuple = ()) -> dict:
    """A profile's sections with ``extends: <name or path>`` applied: the extended profile's sections, then this
    file's keys on top (section by section, key by key). A relative path resolves against this file's folder."""
    raw = load_yaml(path)
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str) or not base_name:
        raise InputError(path, None, "extends", f"must name a profile, got {base_name!r}")
    if len(_chain) >= MAX_EXTENDS or path.resolve() in _chain:
        raise InputError(path, None, "extends", "profiles extend each other in a loop")
    rel = path.parent / base_name
    base_path = rel if rel.suffix in (".yaml", ".yml") and rel.exists() else profile_path(base_name)
    merged = load_profile_raw(base_path, _chain + (path.resolve(),))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _apply_overrides(raw: dict, overrides: list[str], classes: dict[str, type]) -> None:
    """Put ``section.key=value`` overrides into ``raw``, checking each against its stage config first so that an
    error names ``--set`` and the key (with the closest known key for a typo)."""
    sections = {**classes, "run": RunConfig}
    for text in overrides:
        key, value = parse_override(text)
        section, _, field = key.partition(".")
        if not field or section not in sections:
            raise InputError("--set", None, key, f"overrides look like section.key=value with a section in "
                             f"run, {', '.join(STAGES)}{did_you_mean(section, sections)}")
        names = {f.name for f in dataclasses.fields(sections[section])}
        if field not in names:
            raise InputError("--set", None, key, f"unknown key{did_you_mean(field, names)}; known: "
                             f"{', '.join(sorted(names))}")
        ok, _ = _type_ok(value, typing.get_type_hints(sections[section])[field])
        if not ok:
            raise InputError("--set", None, key, f"expected {_type_name(typing.get_type_hints(sections[section])[field])}"
                             f", got {value!r}")
        if raw.get(section) is None:
            raw[section] = {}
        raw[section][field] = value


def _build_stage(cls: type, values: dict, path: Path, section: str, set_keys: set[str]):
    """One section's config; a value its checks refuse is reported with the dotted key and where it came from (the
    profile file, or ``--set``)."""
    try:
        return build_config(cls, values, source=path, section=section)
    except InputError as e:
        if e.path is not None:
            raise
        key = f"{section}.{e.field}" if e.field and not str(e.field).startswith(section + ".") else (e.field or section)
        raise InputError("--set" if key in set_keys else path, None, key, e.message) from None


def resolve_profile(name_or_path: str, overrides: list[str] | None = None) -> ResolvedProfile:
    """Load a profile (following ``extends:``), apply ``section.key=value`` overrides, and build every stage config
    (validating it)."""
    path = profile_path(name_or_path)
    raw = load_profile_raw(path)
    unknown = set(raw) - set(STAGES) - {"run"}
    if unknown:
        bad = sorted(unknown)[0]
        raise InputError(path, None, bad, f"unknown section{did_you_mean(bad, (*STAGES, 'run'))}; sections are run, "
                         f"{', '.join(STAGES)}")
    for section, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise InputError(path, None, section, "expected a mapping of settings")
        for key in (values or {}):
            if SECRET_KEY.search(key):
                raise InputError(path, None, f"{section}.{key}", "secrets are never profile parameters; put the key "
                                 "in an environment variable and name it with api_key_env")
    classes = stage_config_classes()
    _apply_overrides(raw, list(overrides or []), classes)
    for key in (k.split("=", 1)[0].strip() for k in overrides or []):
        if SECRET_KEY.search(key.rpartition(".")[2]):
            raise InputError("--set", None, key, "secrets are never parameters; put the key in an environment "
                             "variable and name it with api_key_env")
    set_keys = {o.split("=", 1)[0].strip() for o in overrides or []}
    stages = {s: _build_stage(classes[s], raw.get(s) or {}, path, s, set_keys) for s in STAGES}
    run = _build_stage(RunConfig, raw.get("run") or {}, path, "run", set_keys)
    return ResolvedProfile(path.stem, path, run, stages, list(overrides or []))


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fingerprints(profile: ResolvedProfile) -> dict[str, str]:
    """Input fingerprint per stage: its parameters chained with every upstream stage's fingerprint."""
    out, chain = {}, ""
    for s in STAGES:
        chain = _fingerprint([chain, s, profile.params(s)])
        out[s] = chain
    return out


def _ipc_kernel_manager():
    """A kernel manager that talks to the kernel over local sockets in a private temporary folder instead of TCP on
    localhost (nothing listens on the network, and the kernel's "running over TCP without encryption" warning is
    gone)."""
    import os
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            folder = tempfile.mkdtemp(prefix="ual-kernel-")
            super().__init__(transport="ipc", ip=os.path.join(folder, "kernel"), **kwargs)

    return IPCKernelManager


def ensure_kernel() -> str:
    """Register this interpreter as the Jupyter kernel ``ual`` if it is not registered yet; returns its name."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if KERNEL_NAME not in specs:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name="Python (ual)", prefix=sys.prefix)
        print(f"registered Jupyter kernel {KERNEL_NAME!r} for {sys.executable}", flush=True)
    return KERNEL_NAME


def dry_run(profile: ResolvedProfile) -> dict:
    """Validate everything that can be checked without loading a model; returns the plan (and estimates)."""
    from ual.train.stage import variant_name, variants

    plan: dict = {"profile": str(profile.path), "run_id": profile.run_id, "stages": {}}
    data = profile.stages["data"]
    for k, src in enumerate(list(data.train_sources) + list(data.eval_sets)):
        if not src.get("path"):
            raise InputError(profile.path, None, f"data source {k}", "has no path")
        p = Path(str(src["path"]))
        local = resolve_data_path(p)
        where = f"local file {local}" if local else "hub id (needs network)"
        if local is None and (str(p).endswith((".json", ".jsonl")) or str(p).startswith((".", "/"))):
            raise InputError(profile.path, None, f"data source {k}.path", f"{p} not found (looked in the working "
                             f"directory and the data root {data_root()}; set UAL_DATA_DIR)")
        plan["stages"].setdefault("data", []).append(f"{src.get('name', src.get('source', p.stem))}: {p} ({where})")
    train_variants = variants(profile.stages["train"])  # validates every TrainConfig of the grid
    plan["stages"]["train"] = [variant_name(v.method, v.mean_eps, v.seed) for v in train_variants]
    from ual.data import plan as data_plan
    from ual.train.estimate import estimate_stages

    plan["data_plan"] = data_plan(profile.stages["data"])  # sources, selection, eval and probe sets
    plan["estimate"] = estimate_stages(profile)  # time and memory per stage on one 80 GB GPU
    for s in STAGES:
        plan["stages"].setdefault(s, "ok")
    return plan


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold the run directory for this process: an OS lock (``fcntl.flock``) on ``run_dir/.lock``, which holds the
    PID. A second process on the same run id is refused at once; a lock left by a dead process is free (the OS drops
    it with the process) and is taken over with a message."""
    import fcntl
    import os

    path = run_dir / ".lock"
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise InputError(run_dir, None, "run_id", f"in use by process {pid} (another 'ual run' on this run id); "
                             "wait for it to finish, or choose another --run-id") from None
        f.seek(0)
        old = f.read().strip()
        if old and old != str(os.getpid()):
            print(f"taking over the lock of {run_dir.name}: process {old} is no longer running", flush=True)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()


def resume_command(profile: ResolvedProfile, runs_root: str | Path, stage: str) -> str:
    """The command that resumes this run at ``stage``: same profile, run id, runs root and overrides."""
    import shlex

    name = profile.name if profile.path.parent.resolve() == PROFILES.resolve() else str(profile.path)
    parts = ["python", "-m", "ual", "run", "--profile", name, "--run-id", profile.run_id]
    if str(runs_root) != "runs":
        parts += ["--runs-root", str(runs_root)]
    for o in profile.overrides:
        if not o.startswith("run.run_id="):
            parts += ["--set", o]
    return " ".join(shlex.quote(p) for p in parts + ["--from", stage])


def _check_upstream(status: dict, fps: dict, stage: str, flag: str, manifest_path: Path) -> None:
    """``--from``/``--only``: every stage before ``stage`` must be complete with the current inputs."""
    for up in STAGES[: STAGES.index(stage)]:
        st = status.get(up, {})
        if st.get("status") != "complete" or st.get("fingerprint") != fps[up]:
            why = "not complete" if st.get("status") != "complete" else "complete with other settings"
            raise InputError(manifest_path, None, f"stages.{up}", f"{flag} {stage} needs stage {up!r} complete with "
                             f"these settings first ({why}); run without {flag}, or with --from {up}")


def _record_failure(manifest_path: Path, status: dict, stage: str, i: int, t0: float, peak, e: BaseException) -> None:
    """Mark ``stage`` failed (and later stages stale) in the manifest; never raises (a full disk must not hide the
    stage's own error behind the handler's)."""
    from ual.common.manifest import now_iso, update_manifest

    status[stage].update(status="failed", finished=now_iso(), seconds=round(time.time() - t0, 1),
                         peak_rss_gib=peak.peak_gib, error=f"{type(e).__name__}: {str(e)[-2000:]}")
    for later in STAGES[i + 1:]:
        if later in status:
            status[later]["status"] = "stale"
    try:
        update_manifest(manifest_path, stages=status)
    except OSError as err:
        print(f"warning: could not record the failure in {manifest_path}: {err}", file=sys.stderr, flush=True)


def run(profile: ResolvedProfile, *, runs_root: str | Path = "runs", from_stage: str | None = None,
        only: str | None = None, progress: bool = True) -> Path:
    """Execute the profile's notebooks into ``runs_root/<run-id>``; returns the run directory.

    Stages that completed with the same fingerprint are skipped unless ``from_stage`` forces a rerun from that
    stage on; ``only`` runs one stage (its upstream stages must be complete). The run directory is locked while
    this runs. Raises ``StageFailed``.
    """
    from ual.common.io import check_writable

    for name, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in STAGES:
            raise InputError(None, None, name, f"unknown stage {value!r}; stages: {', '.join(STAGES)}")
    root = Path(runs_root).resolve()
    run_dir = (root / check_run_id(profile.run_id, profile.path)).resolve()
    if run_dir.parent != root:
        raise InputError(profile.path, None, "run_id", f"{profile.run_id!r} does not name a folder under {root}")
    check_writable(run_dir)
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _run_locked(profile, run_dir, runs_root, from_stage, only, progress)


def _run_locked(profile: ResolvedProfile, run_dir: Path, runs_root, from_stage, only, progress) -> Path:
    import papermill as pm

    from ual.common.io import read_json
    from ual.common.manifest import environment, now_iso, update_manifest

    manifest_path = run_dir / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    fps = stage_fingerprints(profile)
    status = manifest.get("stages", {})
    kernel = ensure_kernel()
    seeds = {"data": profile.stages["data"].seed, "train": profile.stages["train"].seeds}
    update_manifest(manifest_path, run_id=profile.run_id, profile=profile.name, profile_path=str(profile.path),
                    profile_text=profile.path.read_text(), description=profile.run.description,
                    parameters={s: profile.params(s) for s in STAGES}, seeds=seeds, environment=environment(),
                    started=manifest.get("started", now_iso()), last_invocation=now_iso())
    todo = [only] if only else list(STAGES[STAGES.index(from_stage):] if from_stage else STAGES)
    if only:
        _check_upstream(status, fps, only, "--only", manifest_path)
    elif from_stage:
        _check_upstream(status, fps, from_stage, "--from", manifest_path)
    for i, stage in enumerate(STAGES):
        if stage not in todo:
            continue
        st = status.get(stage, {})
        forced = from_stage is not None and STAGES.index(stage) >= STAGES.index(from_stage) or only == stage
        if st.get("status") == "complete" and st.get("fingerprint") == fps[stage] and not forced:
            print(f"[{i + 1}/{len(STAGES)}] {stage}: complete with the same inputs, skipped", flush=True)
            continue
        out_nb = run_dir / "notebooks" / NOTEBOOK_OF[stage]
        print(f"[{i + 1}/{len(STAGES)}] {stage}: running {NOTEBOOK_OF[stage]} -> {out_nb}", flush=True)
        t0 = time.time()
        # An earlier attempt's record (its time and memory) is kept, not overwritten: a forced rerun that only
        # tops up a few files must not erase what the full stage cost.
        history = list(st.get("history", []))
        if st.get("started"):
            history.append({k: st[k] for k in ("status", "started", "finished", "seconds", "peak_rss_gib") if k in st})
        status[stage] = {"status": "running", "started": now_iso(), "fingerprint": fps[stage],
                         "notebook": str(out_nb), **({"history": history} if history else {})}
        update_manifest(manifest_path, stages=status)
        peak = PeakRSS()
        try:
            with peak:
                pm.execute_notebook(str(NOTEBOOKS / NOTEBOOK_OF[stage]), str(out_nb),
                                    parameters={"run_dir": str(run_dir), **profile.params(stage)},
                                    # Relative paths in a profile resolve against where the run was started.
                                    kernel_name=kernel, progress_bar=progress, cwd=str(Path.cwd()),
                                    kernel_manager_class=_ipc_kernel_manager())
        except BaseException as e:
            _record_failure(manifest_path, status, stage, i, t0, peak, e)
            raise StageFailed(stage, out_nb, resume_command(profile, runs_root, stage), e) from None
        status[stage].update(status="complete", finished=now_iso(), seconds=round(time.time() - t0, 1),
                             peak_rss_gib=peak.peak_gib)
        for later in STAGES[i + 1:]:
            if later in status and status[later].get("fingerprint") != fps[later]:
                status[later]["status"] = "stale"
        update_manifest(manifest_path, stages=status)
    update_manifest(manifest_path, finished=now_iso())
    return run_dir


class StageFailed(RuntimeError):
    """A stage notebook raised; its partly executed notebook is kept."""

    def __init__(self, stage: str, notebook: Path, resume: str, cause: BaseException):
        self.stage, self.notebook, self.resume = stage, notebook, resume
        cause_text = str(cause).strip().splitlines()
        tail = "\n".join(cause_text[-12:])
        super().__init__(f"stage {stage!r} failed; its executed notebook with the error is {notebook}\n{tail}\n"
                         f"fix the cause, then resume with: {resume}")


# --------------------------------------------------------------------------------------------------- CLI

def configure_run(p) -> None:
    p.add_argument("--profile", required=True, help="profile name under profiles/ or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one setting")
    p.add_argument("--run-id", help="folder under runs/ (default: the profile's run.run_id or its name)")
    p.add_argument("--runs-root", default="runs", help="parent folder of run directories")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="rerun from this stage on")
    p.add_argument("--only", choices=STAGES, help="run only this stage")
    p.add_argument("--dry-run", action="store_true", help="resolve and validate everything, load no model")


def run_run(args) -> int:
    profile = resolve_profile(args.profile, list(args.set))
    if args.run_id is not None:  # a name, taken as typed (never YAML-parsed: "0012" stays "0012")
        profile.run.run_id = check_run_id(args.run_id)
    if args.dry_run:
        print(json.dumps(dry_run(profile), indent=2, default=str))
        return 0
    try:
        run_dir = run(profile, runs_root=args.runs_root, from_stage=args.from_stage, only=args.only)
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(run_summary(run_dir))
    return 0


def run_summary(run_dir: Path) -> str:
    """What a finished run prints: the headline table (base, SFT, LS, UAL), the figures, and the next commands."""
    from ual.figures.results import markdown_summary

    figures = sorted((run_dir / "figures").glob("*.png"))
    lines = [f"run complete: {run_dir}", "", "Headline metrics (mean ± std over seeds; ↑/↓: higher/lower is better):",
             "", markdown_summary(run_dir), ""]
    if figures:
        lines += ["Figures:"] + [f"  {p}" for p in figures] + [""]
    lines += ["Paired-bootstrap intervals (UAL - SFT, UAL - LS):", f"  python -m ual stats --run {run_dir}",
              "Figures again from the saved files:", f"  python -m ual figures --run {run_dir}"]
    return "\n".join(lines)
