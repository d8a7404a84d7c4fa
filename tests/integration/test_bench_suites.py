"""A suite run for real: `app bench suites` calls benchmarks/vllm_vs_hf.py (a vLLM engine and transformers
`generate` on the session's stored model), reads its JSON into the report's rows and names the command."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli


@pytest.mark.timeout(900)
def test_vllm_vs_hf_suite_runs_its_benchmark_and_reports_it(stored_model, mlflow_uri, home, tmp_path):
    sets = ["--set", "bench.suites.run=[vllm_vs_hf]", "--set", "bench.suites.hf_batches=[2]",
            "--set", "bench.suites.hf_prompts=2", "--set", "bench.suites.rounds=2", "--set", "bench.max_tokens=4",
            "--set", "serving.engine_mode=eager", "--set", f"serving.port={free_port()}",
            "--set", f"bench.out_dir={tmp_path}", "--set", f"tracking.uri={mlflow_uri}"]
    proc = run_cli("app", "bench", "suites", *sets, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    suite = result["suites"]["vllm_vs_hf"]
    assert suite["status"] == "ok", suite
    (row,) = suite["rows"]
    assert row["figure"] == "output tok/s (baseline: HF batch2)" and row["baseline"] > 0 and row["candidate"] > 0
    assert row["ratio"] == pytest.approx(row["candidate"] / row["baseline"], rel=0.5)  # median of ratios vs ratio of medians
    assert len(row["spread"]) == 2 and row["spread"][0] <= row["spread"][1]
    # The command it lists is the one that ran: the benchmark, reading the config written beside its output.
    cmd = shlex.split(suite["command"])
    assert cmd[1] == "benchmarks/vllm_vs_hf.py" and Path(cmd[cmd.index("-c") + 1]).is_file()
    out = json.loads(Path(cmd[cmd.index("--out") + 1]).read_text())
    assert out["median_tok_s"]["vllm"] == row["candidate"] and out["max_tokens"] == 4
    shown = run_cli("app", "bench", "report", *sets, timeout=300)
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
    md = (Path(json.loads(shown.stdout[shown.stdout.rindex("\n{") + 1:])["out_dir"]) / "report.md").read_text()
    assert "### vllm_vs_hf: ok" in md and suite["command"] in md
    assert "vLLM faster than transformers generate beyond noise" in md
