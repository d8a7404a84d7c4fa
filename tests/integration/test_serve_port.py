"""A Ray cluster whose Serve already listens on another port: refused before deploying, by name.

Serve keeps the HTTP port it first started with and ignores a later one with a log line; before this
check an `app serve up` (or a stage deploying for its evaluation) onto such a cluster deployed, then
waited at its own port until the ready timeout. Runs in a child process on a private cluster
(``address="local"``): the session's shared cluster and its Serve are not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SCRIPT = """
import ray
from ray import serve
from app.errors import AppError
from app.serving.config import ServingConfig
from app.serving.manager import check_http_port

ray.init(address="local", num_cpus=1, include_dashboard=False)
serve.start(http_options={"host": "127.0.0.1", "port": 8123})
check_http_port(ServingConfig(port=8123))  # the port Serve runs on: fine
try:
    check_http_port(ServingConfig(port=8431))
    print("NOT REFUSED")
except AppError as exc:
    print("REFUSED:", exc)
finally:
    serve.shutdown()
    ray.shutdown()
"""


def test_deploying_for_another_port_than_the_running_serve_is_refused():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("REFUSED: Serve already runs on this Ray cluster with its HTTP proxy on port 8123, and serving.port is "
            "8431") in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Set serving.port=8123" in proc.stdout
