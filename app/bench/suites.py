"""``app bench suites``: the comparisons an earlier stage or benchmark already measures, run by that one.

One implementation per comparison: this module does not measure, it calls what does and reads its
output into one table of ratios with their spread.

- ``quality``: fine-tuned vs base answers, from the evaluation stage (``app eval run``): the latest
  evaluation that has both models, else a new one. Paired differences with their intervals, overall
  and per question origin.
- ``tuned_vs_default``: the serving section vs vLLM's defaults, by the serve sweep (``app serve sweep``
  with those two trials only): best output throughput under the SLO, rounds interleaved.
- ``serve_vs_vllm``: the Ray Serve endpoint vs the plain vLLM server (``benchmarks/serve_vs_vllm.py``).
- ``vllm_vs_hf``: vLLM vs transformers ``generate`` (``benchmarks/vllm_vs_hf.py``).
- ``int4_vs_bf16``: each INT4 variant vs its bf16 source on vLLM (``benchmarks/quant_serving.py``).

Each suite runs from a config file written next to its output (the benchmark's config with the
suite's settings applied), and its row in the report names the exact command that reproduces it.
Each starts its own servers, so it needs the machine to itself: when the project's endpoint answers
(an experiment left running, say), the suites are skipped with that reason, not run beside it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from app.bench.load import BenchError, bench_dir, endpoint, served_models
from app.config import ExperimentConfig
from app.errors import AppError

ROOT = Path(__file__).resolve().parents[2]
NEEDS_MACHINE = ("tuned_vs_default", "serve_vs_vllm", "vllm_vs_hf", "int4_vs_bf16")


def _row(suite: str, comparison: str, figure: str, baseline: float | None, candidate: float | None,
         higher_is_better: bool, *, ratio: float | None = None, spread: list[float] | None = None,
         beyond_noise: bool | None = None, note: str = "") -> dict[str, Any]:
    if ratio is None and baseline and candidate is not None:
        ratio = candidate / baseline
    return {"suite": suite, "comparison": comparison, "figure": figure, "baseline": baseline, "candidate": candidate,
            "ratio": ratio, "spread": spread, "beyond_noise": beyond_noise, "higher_is_better": higher_is_better,
            "note": note}


def pairing_spread(candidate: list[float] | None, baseline: list[float] | None) -> tuple[list[float] | None,
                                                                                    bool | None]:
    """(the ratio's worst and best pairing of two min-max ranges over rounds, whether it excludes 1)."""
    if not (candidate and baseline and baseline[0] > 0):
        return None, None
    spread = [candidate[0] / baseline[1], candidate[1] / baseline[0]]
    return spread, spread[0] > 1 or spread[1] < 1


def derived_config(cfg: ExperimentConfig, overrides: list[str], path: Path) -> ExperimentConfig:
    """``cfg`` with ``overrides`` applied and validated, written to ``path`` (the suite's command reads it)."""
    out = cfg.with_overrides(overrides, f"bench suite overrides {overrides}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out.to_yaml(), encoding="utf-8")
    return out


def run_command(cmd: list[str], log_path: Path, timeout_s: float, progress: Callable[[str], None],
                env: dict[str, str] | None = None) -> None:
    """Run a benchmark script, its output to ``log_path`` and to progress, stopped after ``timeout_s``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress("$ " + shlex.join(cmd))
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGTERM))
        timer.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                if line.strip():
                    progress("  | " + line.rstrip()[:200])
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        why = f"stopped after {timeout_s:.0f} s (bench.suites.timeout_s)" if rc == -signal.SIGTERM else f"exit {rc}"
        raise BenchError(f"{Path(cmd[1]).name}: {why}; last lines: {' / '.join(tail)}; log: {log_path}")


# ---------------------------------------------------------------- quality (the evaluation stage)

def _find_eval(cfg: ExperimentConfig, base: str, candidate: str) -> tuple[str, dict[str, Any]] | None:
    from app.eval.run import eval_root

    root = eval_root(cfg)
    runs = sorted(root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    for path in runs:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("reference") == base and candidate in summary.get("comparisons", {}):
            return path.parent.name, summary
    return None


def quality_rows(summary: dict[str, Any], base: str, candidate: str) -> list[dict[str, Any]]:
    """Paired differences (candidate - base) of the evaluation's primary metrics, overall and per origin."""
    rows = []
    comp = summary["comparisons"][candidate]
    name = f"{candidate}-vs-{base} (n={summary['examples']})"
    for k in ("domain_correct", "token_f1", "semantic_similarity"):
        c = comp.get(k)
        if not c:
            continue
        rows.append(_row("quality", name, f"{k} (difference)", c["mean_a"], c["mean_b"], True,
                         ratio=c["mean_b"] / c["mean_a"] if c["mean_a"] else None, spread=[c["low"], c["high"]],
                         beyond_noise=not (c["low"] <= 0 <= c["high"]),
                         note=f"difference {c['difference']:+.3f}, p {c['p_permutation']:.3g}; spread = 95% CI of "
                              "the difference"))
    for origin, per in sorted((summary.get("comparisons_by_origin") or {}).items()):
        c = (per.get(candidate) or {}).get("domain_correct")
        if c:
            rows.append(_row("quality", f"{candidate}-vs-{base}, origin {origin}", "domain_correct (difference)",
                             c["mean_a"], c["mean_b"], True, spread=[c["low"], c["high"]],
                             beyond_noise=not (c["low"] <= 0 <= c["high"]),
                             note=f"difference {c['difference']:+.3f}, n={c.get('n', '?')}"))
    return rows


def suite_quality(cfg: ExperimentConfig, out: Path, config_path: Path | None,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    from app.eval.run import evaluate

    base = cfg.model.name
    candidate = cfg.training.output_model or f"{base}-lora"
    found = _find_eval(cfg, base, candidate)
    if found is None:
        progress(f"quality: no evaluation of {candidate} against {base} yet; running `app eval run`")
        suite_cfg = derived_config(cfg, [f"evaluation.run_name=bench-quality-{out.parent.name}"], out / "config.yaml")
        result = evaluate(suite_cfg, out / "config.yaml", progress=progress)
        found = _find_eval(cfg, base, candidate)
        if found is None:
            raise BenchError(f"the evaluation {result['run_name']} did not compare {candidate} with {base}: list both "
                             "in evaluation.models")
        how = "run now"
    else:
        how = "reused (the latest evaluation with both models)"
    run_name, summary = found
    run_id = summary.get("facts", {}).get("mlflow_run_id")
    return {"rows": quality_rows(summary, base, candidate), "evaluation": run_name, "how": how,
            "command": f"app rerun {run_id}" if run_id else f"app eval run (evaluation run {run_name})",
            "note": f"the test split's questions (origins: {', '.join(sorted(summary.get('comparisons_by_origin') or {})) or 'one'}); "
                    "a gain from matching the references' style is not a gain in correctness: on human-written "
                    "questions see benchmarks/human_faq.py"}


# ---------------------------------------------------------------- tuned vs default serving (the serve sweep)

def suite_tuned_vs_default(cfg: ExperimentConfig, out: Path, config_path: Path | None,
                           progress: Callable[[str], None]) -> dict[str, Any]:
    from app.serving.sweep import run_sweep

    s = cfg.bench.suites
    model = served_models(cfg)[0]
    overrides = [f"serving.models={json.dumps([model])}", f"serve_sweep.model={model}", "serve_sweep.trials=[]", "serve_sweep.grid={}",
                 "serve_sweep.include_current=true", "serve_sweep.include_vllm_defaults=true",
                 f"serve_sweep.rounds={s.rounds}", f"serve_sweep.concurrencies={json.dumps(s.concurrencies)}",
                 f"serve_sweep.requests_per_level={s.requests_per_level}",
                 f"serve_sweep.max_tokens={cfg.bench.max_tokens}"]
    suite_cfg = derived_config(cfg, overrides, out / "config.yaml")
    summary = run_sweep(suite_cfg, out / "config.yaml", progress=progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    trials = {t["name"]: t for t in summary["trials"]}
    cur, dflt = trials.get("current"), trials.get("vllm-defaults")
    rows = []
    if cur and dflt:
        name = f"serving section vs vLLM's defaults ({model})"
        spread, beyond = pairing_spread(cur.get("best_range"), dflt.get("best_range"))
        rows.append(_row("tuned_vs_default", name, "best output tok/s under the SLO", dflt["best_under_slo"],
                         cur["best_under_slo"], True, spread=spread, beyond_noise=beyond,
                         note=f"at concurrency {cur['at_concurrency']} vs {dflt['at_concurrency']}; spread = the "
                              "rounds' worst and best pairing (beyond noise when the ranges do not overlap)"))
        rows.append(_row("tuned_vs_default", name, "max output tok/s", dflt["max_throughput"], cur["max_throughput"],
                         True))
    return {"rows": rows, "sweep_dir": summary["out_dir"], "mlflow_run_id": summary["run_id"],
            "command": f"app serve sweep -c {out / 'config.yaml'}"}


# ---------------------------------------------------------------- Ray Serve vs plain vLLM

def suite_serve_vs_vllm(cfg: ExperimentConfig, out: Path, config_path: Path | None,
                        progress: Callable[[str], None]) -> dict[str, Any]:
    s = cfg.bench.suites
    derived_config(cfg, [], out / "config.yaml")
    cmd = [sys.executable, "benchmarks/serve_vs_vllm.py", "-c", str(out / "config.yaml"),
           "--concurrencies", ",".join(map(str, s.concurrencies)), "--requests-per-level", str(s.requests_per_level),
           "--max-tokens", str(cfg.bench.max_tokens), "--out", str(out / "serve_vs_vllm.json")]
    run_command(cmd, out / "run.log", s.timeout_s, progress)
    doc = json.loads((out / "serve_vs_vllm.json").read_text(encoding="utf-8"))
    rows = []
    for r in doc["rows"]:
        name = f"Ray Serve vs plain vLLM ({doc['model']}), c={r['concurrency']}"
        note = "one deployment each: no spread (a single deployment's noise was about ±10% here)"
        rows.append(_row("serve_vs_vllm", name, "output tok/s", r["vllm_tok_s"], r["serve_tok_s"], True, note=note))
        rows.append(_row("serve_vs_vllm", name, "p50 TTFT ms", r["vllm_p50_ttft_ms"], r["serve_p50_ttft_ms"], False))
        rows.append(_row("serve_vs_vllm", name, "p95 E2E ms", r["vllm_p95_e2e_ms"], r["serve_p95_e2e_ms"], False))
    return {"rows": rows, "ready_s": doc.get("ready_s"), "command": shlex.join(cmd)}


# ---------------------------------------------------------------- vLLM vs transformers generate

def suite_vllm_vs_hf(cfg: ExperimentConfig, out: Path, config_path: Path | None,
                     progress: Callable[[str], None]) -> dict[str, Any]:
    s = cfg.bench.suites
    derived_config(cfg, [], out / "config.yaml")
    cmd = [sys.executable, "benchmarks/vllm_vs_hf.py", "-c", str(out / "config.yaml"), "--prompts", str(s.hf_prompts),
           "--max-tokens", str(cfg.bench.max_tokens), "--hf-batches", ",".join(map(str, s.hf_batches)),
           "--rounds", str(s.rounds), "--out", str(out / "vllm_vs_hf.json")]
    run_command(cmd, out / "run.log", s.timeout_s, progress)
    doc = json.loads((out / "vllm_vs_hf.json").read_text(encoding="utf-8"))
    per_round = doc["speedup_per_round"]
    best = doc["best_hf"]
    rows = [_row("vllm_vs_hf", f"vLLM vs transformers generate ({doc['model']}, {doc['dtype']})",
                 f"output tok/s (baseline: HF {best.replace('hf_', '')})", doc["median_tok_s"][best],
                 doc["median_tok_s"]["vllm"], True, ratio=doc["speedup_vs_best_hf"],
                 spread=[min(per_round), max(per_round)], beyond_noise=min(per_round) > 1 or max(per_round) < 1,
                 note=f"{doc['prompts']} prompts x {doc['max_tokens']} tokens, medians of {len(per_round)} rounds; "
                      "spread = the per-round ratios")]
    return {"rows": rows, "command": shlex.join(cmd)}


# ---------------------------------------------------------------- INT4 vs bf16

def int4_models(cfg: ExperimentConfig) -> tuple[str, list[str]]:
    """(bf16 source, INT4 variants): bench.suites.int4_models, else the store's quantized entries of the
    fine-tuned model."""
    from app.model_store import model_store

    source = cfg.training.output_model or f"{cfg.model.name}-lora"
    store = model_store(cfg)
    names = list(cfg.bench.suites.int4_models)
    if names:
        parents = {store.get(n).manifest.get("parent") for n in names}
        if len(parents) != 1:
            raise BenchError(f"bench.suites.int4_models {names} come from different models ({sorted(map(str, parents))})"
                             ": compare variants of one bf16 model at a time")
        source = parents.pop() or source
    else:
        names = [m.name for m in store.list() if m.kind == "quantized" and m.manifest.get("parent") == source]
    if not names:
        raise BenchError(f"no INT4 variant of {source} in the model store: run `app quantize run` first, or name "
                         "them in bench.suites.int4_models")
    store.get(source)  # a clear error when the bf16 source is missing
    return source, names


def suite_int4_vs_bf16(cfg: ExperimentConfig, out: Path, config_path: Path | None,
                       progress: Callable[[str], None]) -> dict[str, Any]:
    s = cfg.bench.suites
    source, variants = int4_models(cfg)
    cmd = [sys.executable, "benchmarks/quant_serving.py", "--models", source, *variants, "--repeats", str(s.rounds),
           "--requests", str(s.int4_requests), "--concurrency", str(s.int4_concurrency),
           "--max-tokens", str(cfg.bench.max_tokens), "--out", str(out / "quant_serving.json")]
    home = str(cfg.paths.resolved_home())
    run_command(cmd, out / "run.log", s.timeout_s, progress, env={"DOMAIN_LLM_HOME": home})
    doc = json.loads((out / "quant_serving.json").read_text(encoding="utf-8"))
    base = doc["summary"][0]
    figures = {"size_mib": ("checkpoint MiB", False), "pss_gib": ("PSS GiB after warm-up", False),
               "c1_decode_tok_s": ("c=1 decode tok/s", True), "c1_ttft_p50_ms": ("c=1 TTFT p50 ms", False),
               "cN_tok_s": (f"c={s.int4_concurrency} output tok/s", True),
               "cN_ttft_p50_ms": (f"c={s.int4_concurrency} TTFT p50 ms", False)}
    rows = []
    for v in doc["summary"][1:]:
        if not v.get("ok"):
            rows.append(_row("int4_vs_bf16", f"{v['variant']} vs {base['variant']}", "server failed", None, None,
                             True, note="see the log"))
            continue
        for key, (label, hib) in figures.items():
            spread, beyond = (None, None) if key == "size_mib" else pairing_spread(v.get(key + "_range"),
                                                                                   base.get(key + "_range"))
            rows.append(_row("int4_vs_bf16", f"{v['variant']} vs {base['variant']}", label, base[key], v[key], hib,
                             spread=spread, beyond_noise=True if key == "size_mib" else beyond,
                             note="medians of the rounds; spread = the rounds' worst and best pairing"
                             if spread else ""))
    return {"rows": rows, "command": f"DOMAIN_LLM_HOME={shlex.quote(home)} {shlex.join(cmd)}"}


SUITE_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "quality": suite_quality, "tuned_vs_default": suite_tuned_vs_default, "serve_vs_vllm": suite_serve_vs_vllm,
    "vllm_vs_hf": suite_vllm_vs_hf, "int4_vs_bf16": suite_int4_vs_bf16}


def endpoint_up(cfg: ExperimentConfig) -> str | None:
    """The URL of the project's endpoint when it answers (then the machine is not free), else None."""
    try:
        url, _, _ = endpoint(cfg.model_copy(update={"bench": cfg.bench.model_copy(update={"url": None})}))
    except BenchError:
        return None
    return url


def run_suites(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
               progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``bench_suites`` stage: every suite of bench.suites.run, each bounded, failures recorded."""
    import mlflow

    from app.tracking import finite, log_step_metrics, start_run

    wanted = list(cfg.bench.suites.run)
    if not wanted:
        raise BenchError("bench.suites.run is empty: name at least one suite")
    out_dir = bench_dir(cfg) / "suites" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    busy = endpoint_up(cfg) if any(s in NEEDS_MACHINE for s in wanted) else None
    results: dict[str, dict[str, Any]] = {}
    with start_run(cfg, "bench_suites", config_path, tags={"rerun_of": rerun_of} if rerun_of else {}) as run:
        for i, name in enumerate(wanted, 1):
            progress(f"== suite {i}/{len(wanted)}: {name} ==")
            if busy and name in NEEDS_MACHINE:
                results[name] = {"status": "skipped", "rows": [], "reason": (
                    f"the endpoint at {busy} is up: this suite starts its own servers and needs the machine to "
                    "itself; stop it (`app serve down`, `app ab stop`) and run `app bench suites`")}
                progress(f"skipped: {results[name]['reason']}")
                continue
            started = time.time()
            try:
                res = SUITE_FUNCTIONS[name](cfg, out_dir / name, config_path, progress)
                results[name] = {"status": "ok", **res}
            except AppError as exc:  # a suite that cannot run says why; the others still run
                results[name] = {"status": "failed", "rows": [], "reason": str(exc)}
                progress(f"failed: {exc}")
            results[name]["seconds"] = round(time.time() - started, 1)
        for name, res in results.items():
            for j, r in enumerate(res.get("rows", [])):
                if r.get("ratio") is not None:
                    log_step_metrics({f"{name}.{j}.ratio": r["ratio"]}, step=0)
        doc = {"suites": results, "out_dir": str(out_dir), "mlflow_run_id": run.info.run_id}
        (out_dir / "suites.json").write_text(json.dumps(finite(doc), indent=2), encoding="utf-8")
        mlflow.log_artifacts(str(out_dir), "bench_suites")
    return doc
