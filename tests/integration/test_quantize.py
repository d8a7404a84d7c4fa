"""INT4 quantization for real: llm-compressor AWQ and GPTQ in the quantization environment, QAT on
Ray Train, every variant served by vLLM on Ray Serve and answering through the OpenAI endpoint.

The source is a short fine-tuning run of the session's base model (2 steps on Ray Train: what QAT
starts from is its training checkpoint; the LoRA-survival analysis is covered against real updates in
tests/unit/quantize/test_analysis.py). One `app quantize run` makes the three variants (AWQ, GPTQ,
and QAT packed with the same scheme), evaluates them with the source on a few test-split questions
plus a general one (four vLLM engines on Ray Serve, one at a time), and writes the analysis. Then the
bad inputs: each refused before any work, with the store as it was; and a run whose second method
(AWQ, past its time limit) fails leaves nothing of the first in the store.

CI time: the four engines one at a time (evaluation.serve_one_at_a_time), not together: four replicas
starting together on 2 cores took 687 s of a 36-minute run (2026-12-03) and timed CI out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from app.config import ModelConfig
from app.model_store import ModelStore
from tests.conftest import BIN, OWNER_VAR, owner_token, run_cli, stop_owned, summary_json

pytestmark = pytest.mark.integration
OWNER = owner_token()
BASE = ModelConfig().name  # the session's stored base model
SOURCE = "it-qsrc"  # its short fine-tuning run: the quantize run's source
PORT = 8431
# Short fine-tuning, also the QAT phase's settings (it is the same training loop).
TRAIN = ["training.micro_batch_size=2", "training.max_steps=2", "training.eval_every=2",
         "training.val_generation_samples=2", "training.val_loss_samples=8", "training.val_max_new_tokens=16",
         "training.warmup_ratio=0", "training.eval_at_start=false", "training.compare_on_validation=false",
         "training.register_model=false"]
# The bad-input and failed-method runs quantize the base model: quantize.qat=false, it has no training
# checkpoint for QAT to start from.
COMMON = ["data.name=it-build", f"quantize.source_model={BASE}", "prompt.max_context_tokens=96",
          f"serving.port={PORT}", "serving.kv_cache_gib=1", "serving.request_timeout_s=120", "serving.engine_mode=eager",
          "quantize.qat=false"]
SMALL_QUANT = ["quantize.calibration_samples=8", "quantize.max_seq_len=128",
               "quantize.awq_grid=4", "quantize.perplexity_samples=4",
               "quantize.heldout_samples=2", "quantize.eval_max_examples=2", "evaluation.max_new_tokens=24", "evaluation.bootstrap_samples=200",
               "evaluation.concurrency=2"]
METHODS = {"awq", "gptq", "qat"}


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def env() -> dict[str, str]:
    return {"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": "", OWNER_VAR: OWNER}


@pytest.fixture(scope="module", autouse=True)
def stop_what_the_module_started():
    yield
    stop_owned(OWNER)


@pytest.fixture(scope="module")
def base(qa_build, stored_model):
    assert stored_model.name == BASE
    return stored_model


# The module's fixtures run in its first test: a 2-step fine-tuning run, then the quantize run (AWQ,
# GPTQ, QAT; four engines on Ray Serve one at a time for the evaluation; the analysis), on the
# session's dataset (training, calibration) and base model.
@pytest.fixture(scope="module")
def source(base, home):
    proc = run_cli("app", "train", "run", *sets("data.name=it-build", "prompt.max_context_tokens=96", *TRAIN,
                                                f"training.output_model={SOURCE}", f"training.run_name={SOURCE}"),
                   env=env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return ModelStore(home / "models").get(SOURCE)


@pytest.fixture(scope="module")
def quantized(source, home, tmp_path_factory):
    general = tmp_path_factory.mktemp("q") / "general.jsonl"
    # Not France: its first token is a near tie for the base model in float32 (see test_serving). With
    # its own context: a question without one gets the corpus's best BM25 passage, which for this
    # question is about Unicode and derailed the INT4 base model in CI (the bf16 one still said Tokyo).
    general.write_text(json.dumps({"question": "What is the capital of Japan?",
                                   "context": "Tokyo is the capital and the largest city of Japan.",
                                   "answer": "The capital of Japan is Tokyo.", "topic": "general"}) + "\n")
    overrides = [*COMMON, *SMALL_QUANT, *TRAIN, f"evaluation.test_set={general}", "evaluation.with_test_split=2",
                 "prompt.use_context=true", f"quantize.source_model={SOURCE}", "quantize.methods=[awq, gptq]",
                 "quantize.qat=true", "quantize.qat_steps=2", "evaluation.serve_one_at_a_time=true"]
    proc = run_cli("app", "quantize", "run", *sets(*overrides), env=env(), timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"summary": summary_json(proc.stdout), "stdout": proc.stdout, "overrides": overrides}


@pytest.mark.timeout(2400)
def test_every_variant_is_stored_with_its_recipe(quantized, source, home):
    summary = quantized["summary"]
    variants = summary["variants"]
    assert set(variants) == METHODS
    assert variants == {m: f"{SOURCE}-{m}-w4g64-asym" for m in METHODS}
    store = ModelStore(home / "models")
    for method, name in variants.items():
        m = store.get(name, verify=True)
        assert m.kind == "quantized" and m.manifest["parent"] == SOURCE and m.manifest["method"] == method
        assert m.manifest["scheme"] == "W4A16_ASYM" and m.manifest["group_size"] == 64
        assert m.manifest["kept_bf16"] == ["lm_head"]
        assert m.manifest["environment"]["llmcompressor"] == "0.14.0.1"
        assert m.manifest["environment"]["python"].endswith(".venv-quant/bin/python")
        assert m.manifest["source_sha256"] and "weight_packed" not in json.dumps(m.manifest["files"])
        config = json.loads((m.path / "config.json").read_text())
        assert config["quantization_config"]["format"] == "pack-quantized"
        if method == "qat":  # the QAT phase's merged bf16 model, packed with the rounding it trained against
            assert m.manifest["packer"] == "rtn" and m.manifest["calibration_sha256"] is None
            assert m.manifest["trained_from"] == f"{name}-bf16" and store.get(f"{name}-bf16").kind != "quantized"
        else:
            assert m.manifest["calibration_sha256"] == summary["calibration_sha256"]
            assert m.manifest["calibration_samples"] == 8 and m.manifest["trained_from"] == SOURCE
    assert "AWQModifier" in store.get(variants["awq"]).manifest["recipe"]
    assert "GPTQModifier" in store.get(variants["gptq"]).manifest["recipe"]
    assert not [p.name for p in store.root.iterdir() if p.name.startswith(".")]  # no hidden leftovers
    assert "calibrating on 8 samples" in quantized["stdout"]  # progress during calibration
    assert "== QAT: 2 steps from" in quantized["stdout"]


def test_sizes_accuracy_and_analysis_are_reported(quantized, home):
    summary = quantized["summary"]
    rows = {r["method"]: r for r in summary["sizes"]}
    for method in METHODS:
        assert rows[method]["quantized_layer_reduction"] > 0.7, rows  # 4 bits + scales and zero points vs 16 bits
        assert 0.4 < rows[method]["size_reduction"] < rows[method]["quantized_layer_reduction"], rows
    acc = summary["accuracy"]
    assert acc["source"] == SOURCE and set(acc["variants"]) == set(summary["variants"].values())
    for v in acc["variants"].values():
        assert v["ci"][0] <= v["drop"] <= v["ci"][1] and 0 <= v["p_value"] <= 1 and v["n"] == 3
    out = Path(summary["output"])
    report = (out / "report.md").read_text()
    accuracy_table = report[report.index("## Accuracy"):]
    for name in summary["variants"].values():
        assert name in report and f"| {name} |" in accuracy_table, accuracy_table[:1000]
    html = (out / "report.html").read_text()
    assert "<img" in html and "perplexity" in html.lower()
    analysis = json.loads((out / "summary.json").read_text())["analysis"]
    assert analysis["perplexity"] and all(v > 1 for v in analysis["perplexity"].values() if isinstance(v, float))


def test_every_variant_answers_through_the_serve_endpoint(quantized, home):
    """The evaluation served the source and each INT4 variant (AWQ, GPTQ, QAT) with vLLM on Ray Serve
    (OpenAI API), one at a time: each passed the deployment's correctness gate against its own float32
    reference (the variants with the looser threshold for quantized weights: the engine's INT4 kernel
    computes what the checkpoint means) and answered every question; the bf16 source knows the capital
    of Japan.

    The variants' answers to that question are printed, not asserted: with 8 calibration samples a
    variant may lose it in the evaluation's context template (the GPTQ variant of the base model did in
    CI, 2026-12-03, while it still answered it in the gate's plain chat prompt). That is a quality drop,
    which the accuracy figures measure; this test checks that every INT4 checkpoint loads, passes the
    gate and answers."""
    from app.serving.gate import GATE_PROMPTS, reference_path

    out = home / "eval" / f"{quantized['summary']['run_name']}-eval"
    table = pd.read_parquet(out / "examples.parquet")
    facts = json.loads((out / "summary.json").read_text())["facts"]
    general = table[table["topic"] == "general"]
    assert len(general) == 1
    store = ModelStore(home / "models")
    for name in [SOURCE, *quantized["summary"]["variants"].values()]:
        assert (table[f"{name}__error"] == "").all(), name
        assert table[f"{name}__answer"].str.len().gt(0).all(), name
        assert facts["models"][name]  # answered through the project's Serve app
        ref = json.loads(reference_path(store, name).read_text())  # the gate ran for it (and passed: the run went on)
        assert len(ref["answers"]) == len(GATE_PROMPTS) and ref["fingerprint"], name
    assert "Tokyo" in general[f"{SOURCE}__answer"].iloc[0], general[f"{SOURCE}__answer"].iloc[0]
    # One model at a time: the app was removed before each next model was deployed.
    assert quantized["stdout"].count("removing the Serve app before the next model") == 3
    print(f"\nINT4 variants on the general question: {general.iloc[0].filter(regex='__answer$').to_dict()}")


def test_mlflow_records_the_run_the_environment_and_the_report(quantized, mlflow_uri):
    import mlflow

    run = mlflow.MlflowClient(mlflow_uri).get_run(quantized["summary"]["run_id"])
    assert run.data.tags["app.stage"] == "quantize"
    assert run.data.tags["quantize.env.python"].endswith(".venv-quant/bin/python")
    assert run.data.tags["quantize.env.llmcompressor"] == "0.14.0.1"
    arts = {a.path for a in mlflow.MlflowClient(mlflow_uri).list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/summary.json"} <= arts
    for name in quantized["summary"]["variants"].values():
        assert run.data.metrics[f"{name}.size_reduction"] > 0.4, name
    assert run.data.tags["quantize.qat_run"]  # the QAT phase's own finetune run


def store_state(home: Path) -> dict[str, float]:
    root = home / "models"
    return {p.name: p.stat().st_mtime for p in root.iterdir()}


@pytest.mark.parametrize("overrides, message", [
    (["quantize.group_size=128"], "group_size 128 does not divide the input width of 180 of 210 layers"),
    (["quantize.scheme=W4A8"], "quantize.scheme"),
    (["quantize.source_model=no-such-model"], "quantize.source_model 'no-such-model' is not usable"),
    (["quantize.calibration_samples=100000"], "too few calibration samples"),
    (["quantize.ignore=[lm_head, v_proj]"], "vLLM serves q_proj/k_proj/v_proj as one fused layer"),
])
def test_bad_input_is_refused_before_any_work(base, home, overrides, message):
    before = store_state(home)
    proc = run_cli("app", "quantize", "run", *sets(*COMMON, *SMALL_QUANT, *overrides), env=env(), timeout=300)
    assert proc.returncode != 0
    assert message in " ".join((proc.stdout + proc.stderr).split())
    assert "Traceback" not in proc.stdout + proc.stderr
    assert store_state(home) == before


def test_a_failed_method_leaves_the_store_as_it_was(base, home):
    """rtn finishes, then awq runs past its time limit: neither variant is registered, no folder is left."""
    before = store_state(home)
    proc = run_cli("app", "quantize", "run", *sets(*COMMON, *SMALL_QUANT, "quantize.methods=[rtn, awq]",
                                                   "quantize.timeout_s=45",
                                                   "quantize.calibration_samples=16", "quantize.awq_grid=20"),
                   env=env(), timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:]
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "awq calibration ran past quantize.timeout_s (45 s)" in text and f"{BASE}-rtn-w4g64-asym" in text
    assert store_state(home) == before
