"""The suites' plumbing: configs written for their commands, bounded subprocesses, clear errors."""

from __future__ import annotations

import sys

import pytest

from app.bench.load import BenchError
from app.bench.suites import derived_config, int4_models, run_command
from app.config import ExperimentConfig, load_config


def test_the_suite_config_is_the_benchmarks_with_its_settings_and_reads_back(tmp_path):
    cfg = ExperimentConfig(seed=7)
    out = derived_config(cfg, ["serve_sweep.trials=[]", "serve_sweep.concurrencies=[4, 16]"], tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == out and again.seed == 7 and again.serve_sweep.concurrencies == [4, 16]
    with pytest.raises(Exception, match="concurrencies"):
        derived_config(cfg, ["serve_sweep.concurrencies=[16, 4]"], tmp_path / "bad.yaml")


def test_a_command_is_logged_bounded_and_its_failure_named(tmp_path):
    lines = []
    run_command([sys.executable, "-c", "print('hello')"], tmp_path / "ok.log", 30, lines.append)
    assert "  | hello" in lines and (tmp_path / "ok.log").read_text() == "hello\n"
    with pytest.raises(BenchError, match=r"exit 3; last lines: bye"):
        run_command([sys.executable, "-c", "print('bye'); raise SystemExit(3)"], tmp_path / "f.log", 30, lines.append)
    with pytest.raises(BenchError, match=r"stopped after 1 s \(bench.suites.timeout_s\)"):
        run_command([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "t.log", 1, lines.append)


def test_int4_needs_a_variant_in_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAIN_LLM_HOME", str(tmp_path))  # it overrides paths.home
    cfg = ExperimentConfig()
    with pytest.raises(BenchError, match="no INT4 variant of smollm2-135m-instruct-lora in the model store"):
        int4_models(cfg)
