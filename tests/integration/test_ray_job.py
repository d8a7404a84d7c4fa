"""A job submitted with `ray job submit` to a local `ray start --head` cluster, as users do."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import mlflow
import pytest

from tests.conftest import BIN, OWNER_VAR, ROOT, free_port, owner_token, stop_owned

pytestmark = pytest.mark.integration


@pytest.fixture
def ray_head():
    # Ray's unix socket paths must stay under ~107 characters: pytest's tmp_path is too deep.
    tmp_path = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port, dash = free_port(), free_port()
    # As a user with the venv activated: the job's `python` must be the project's interpreter.
    # OWNER_VAR marks the cluster's processes (and the job's) for the teardown.
    owner = owner_token()
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}", OWNER_VAR: owner}
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                        "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, text=True, timeout=180)
        address = f"http://127.0.0.1:{dash}"
        # `ray start` returns before the dashboard agent takes jobs ("No available agent to submit
        # job"): wait until a trivial job is accepted.
        deadline = time.time() + 180
        while True:
            probe = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait", "--",
                                    "python", "-c", "pass"], env={**env, "RAY_AUTH_MODE": "token"},
                                   capture_output=True, text=True, timeout=120)
            if probe.returncode == 0:
                break
            assert time.time() < deadline, f"cluster never accepted a job: {probe.stderr[-1500:]}"
            time.sleep(3)
        yield address
    finally:  # also when the cluster never came up
        # This cluster only: `ray stop` would stop every Ray process on the machine.
        stop_owned(owner)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_job_submit_to_local_cluster(ray_head, mlflow_uri, stored_model, home):
    runtime_env = {"env_vars": {"DOMAIN_LLM_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_uri,
                                "HF_HUB_OFFLINE": "1"}}
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "jobs/prepare_model.py", "--set", "name=ray-job-test"],
        # The cluster runs with token auth (Ray 2.60's default); the client sends ~/.ray/auth_token
        # only in token mode.
        cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-2000:])
    assert "succeeded" in proc.stdout
    summary = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index('{\n  "run_id"'):])[0]
    run = mlflow.MlflowClient().get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["app.stage"] == "prepare_model"
    assert run.data.params["name"] == "ray-job-test"
    assert float(run.data.metrics["probe_accuracy"]) >= 0.75
