"""Every stage gives the same clean error through its ``jobs/*.py`` entry and through the CLI.

Bad input ends with one line ``error: <what is wrong>`` on stderr and a non-zero exit, never a
traceback, and the job and the CLI agree on the line and the exit code (both go through
``app.errors.report_errors``). The inputs are chosen to fail before any Ray cluster starts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

MISSING = "/nonexistent/domain-llm-test"
# (job script, the CLI command running the same stage, bad settings, words the message must contain)
CASES = [
    ("prepare_model.py", ["model", "prepare"], ["model.name=no-such-model", f"model.source={MISSING}"], MISSING),
    ("build_dataset.py", ["dataset", "build"], [f"data.docs_dir={MISSING}"], "does not exist"),
    ("finetune.py", ["train", "run"], ["data.name=no-such-dataset"], "no build of dataset 'no-such-dataset'"),
    ("tune_lora.py", ["train", "tune"], ["data.name=no-such-dataset"], "no build of dataset 'no-such-dataset'"),
    ("evaluate.py", ["eval", "run"], [f"evaluation.test_set={MISSING}/q.jsonl"], MISSING),
    ("serve_sweep.py", ["serve", "sweep"], ["serving.models=[no-such-model]"], "no-such-model"),
    ("quantize.py", ["quantize", "run"], ["quantize.source_model=no-such-model"],
     "quantize.source_model 'no-such-model' is not usable"),
    ("pipeline.py", ["run"], ["model.name=no-such-model", f"model.source={MISSING}"], MISSING),
    # A config the schema rejects: exit 2 from both, before any stage code.
    ("finetune.py", ["train", "run"], ["training.lr=fast"], "training.lr"),
]


def error_text(proc) -> list[str]:
    """stderr from the line that starts with ``error: `` to the end (a config error lists one problem
    per line after it); [] when there is none."""
    lines = [line.rstrip() for line in proc.stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    return lines[starts[0]:] if len(starts) == 1 else []


@pytest.mark.parametrize("job,command,sets,words", CASES, ids=[f"{c[0]}:{c[2][-1]}" for c in CASES])
def test_a_bad_input_gives_one_clean_error_from_job_and_cli(job, command, sets, words, mlflow_uri, stored_model):
    args = [a for s in sets for a in ("--set", s)]
    with ThreadPoolExecutor(2) as pool:  # side by side: each is mostly one process importing its stage
        job_run = pool.submit(run_cli, "python", str(Path("jobs") / job), *args, env={"RAY_ADDRESS": ""}, timeout=300,
                              cwd=ROOT)
        cli_run = pool.submit(run_cli, "app", *command, *args, env={"RAY_ADDRESS": ""}, timeout=300)
        by_job, by_cli = job_run.result(), cli_run.result()
    for proc in (by_job, by_cli):
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
        assert words in "\n".join(error_text(proc)), out[-2000:]
    config_error = sets == ["training.lr=fast"]
    assert by_job.returncode == by_cli.returncode == (2 if config_error else 1)
    assert error_text(by_job) == error_text(by_cli)
    assert config_error or len(error_text(by_job)) == 1  # a stage's error is one line
