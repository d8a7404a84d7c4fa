"""Shared fixtures: an isolated app home, the real base model converted once, a real MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.serving.manager import free_port  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """DOMAIN_LLM_HOME for the whole session, so the base model is converted once."""
    path = tmp_path_factory.mktemp("home")
    os.environ["DOMAIN_LLM_HOME"] = str(path)
    # Nothing in the tests may reach a model hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    return path


@pytest.fixture(scope="session")
def stored_model(home):
    """The embedded default model, converted from its GGUF file into the session's store."""
    from app.config import ModelConfig
    from app.model_store import ModelStore

    return ModelStore(home / "models").prepare(ModelConfig())


@pytest.fixture(scope="session")
def mlflow_uri(home):
    """A real MLflow server (SQLite backend) on a free port; MLFLOW_TRACKING_URI points at it."""
    from app.config import TrackingConfig
    from app.tracking import start_server, stop_server

    uri = start_server(TrackingConfig(port=free_port()), home)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    stop_server(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path = ROOT):
    """Run the installed `app` command (or another console script) and capture its output."""
    cmd = [str(BIN / args[0]), *args[1:]]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
