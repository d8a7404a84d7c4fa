"""``app bench load``: one bounded headless Locust run of app/bench/locustfile.py against the endpoint.

Before the run: the target is resolved (the project's endpoint, or ``bench.url`` on this machine
unless ``bench.allow_remote``), the model must be listed there, the domain prompts (test-split
questions with their context, as evaluation sends them) are written, and a greedy reference answer
is taken. During it: the deployment's resident memory and Locust's own CPU are sampled. After it:
the reference question is asked again (the service must still answer, the same way), Locust's CSV
is parsed into TTFT / TPOT / ITL / E2E figures, a soak's memory slope is judged, and the whole run
(CSV, HTML, samples, summary) goes to ``<home>/bench/load/<stamp>-<profile>/`` and to MLflow.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from app.bench.config import BenchConfig
from app.bench.monitor import Sampler, memory_slope, peaks
from app.config import ExperimentConfig
from app.endpoint import base_url, bearer, external_endpoint, listed_models, serving_key
from app.errors import AppError
from app.tracking import PROJECT_ROOT

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
KEY_VAR = "DOMAIN_LLM_BENCH_KEY"  # the key travels to Locust in its environment, never on its command line
ENTRIES = {"e2e": ("POST", "chat"), "ttft": ("LLM", "TTFT"), "tpot": ("LLM", "TPOT"), "itl": ("LLM", "ITL")}
PERCENTILES = ("50%", "90%", "95%", "99%")


class BenchError(AppError, RuntimeError):
    """A benchmark could not run; the message says why."""


def bench_dir(cfg: ExperimentConfig) -> Path:
    b = cfg.bench
    return Path(b.out_dir).expanduser() if b.out_dir else cfg.paths.resolved_home() / "bench"


def served_models(cfg: ExperimentConfig) -> list[str]:
    """The models benchmarked on the project's endpoint: bench.models, else serving.models, else model.name."""
    return list(cfg.bench.models) or list(cfg.serving.models) or [cfg.model.name]


def endpoint(cfg: ExperimentConfig) -> tuple[str, str | None, set[str]]:
    """(base URL without /v1, API key, model ids it serves) of the benchmarked endpoint; a clear error
    when it does not answer."""
    b: BenchConfig = cfg.bench
    if b.url:
        v1, key = external_endpoint(b.url, b.api_key_env, "bench.url", BenchError)
        url = v1[: -len("/v1")]
    else:
        url, key = base_url(cfg.serving), serving_key(cfg.serving)
    try:
        return url, key, listed_models(url + "/v1", key)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"the endpoint {url} does not answer ({type(exc).__name__}: {exc}); start it with "
                         "`app serve up` (or `app ab start` for bench.target=ab), or set bench.url") from None


def target(cfg: ExperimentConfig) -> tuple[str, str, str | None]:
    """(base URL without /v1, model id to ask for, API key) of the benchmarked endpoint; a clear error
    when the model is not served there."""
    b: BenchConfig = cfg.bench
    url, key, served = endpoint(cfg)
    model = cfg.ab.public_model if b.target == "ab" else (b.model or served_models(cfg)[0])
    if model not in served:
        hint = "`app ab start`" if b.target == "ab" else "`app serve up` with it in serving.models"
        raise BenchError(f"model {model!r} is not served at {url} (served: {sorted(served)}); start it with {hint}")
    return url, model, key


_QUESTIONS: dict[str, list[dict[str, Any]]] = {}  # test-split prompts by the config they were built from


def write_prompts(cfg: ExperimentConfig, path: Path, progress: Callable[[str], None]) -> int:
    """The domain prompts Locust's users send: ``bench.prompts`` test-split questions, seeded sample.
    The test set is read, given its context and formatted once per process and config (`app bench all`
    runs six stages on the same one); the bench section itself does not change the prompts."""
    from app.ab.simulate import test_questions

    key = cfg.model_dump_json(exclude={"bench"})
    if key not in _QUESTIONS:
        _QUESTIONS[key] = test_questions(cfg, progress)
    questions = _QUESTIONS[key]
    rng = random.Random(cfg.seed)
    chosen = rng.sample(questions, min(cfg.bench.prompts, len(questions)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": q["messages"]}) + "\n" for q in chosen), encoding="utf-8")
    return len(chosen)


def probe(url: str, model: str, key: str | None, messages: list[dict], timeout_s: float = 120) -> dict[str, Any]:
    """One greedy, non-streamed answer (the service's correctness before and after the load)."""
    body = {"model": model, "messages": messages, "max_tokens": 24, "temperature": 0.0, "user": "bench-probe"}
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(key), timeout=timeout_s)
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if r.status_code != 200:
        return {"ok": False, "error": f"HTTP {r.status_code}: {r.text[:200]}"}
    text = (r.json()["choices"][0]["message"].get("content") or "").strip()
    return {"ok": bool(text), "text": text, **({} if text else {"error": "empty answer"})}


def locust_command(cfg: ExperimentConfig, url: str, model: str, prompts: Path, prefix: Path) -> list[str]:
    b, lc = cfg.bench, cfg.bench.load
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url, "--model", model,
            "--prompts", str(prompts), "--max-tokens", str(b.max_tokens), "--ignore-eos", str(b.ignore_eos).lower(),
            "--api-key-env", KEY_VAR, "--unit-header", cfg.ab.unit_header, "--shape", lc.profile,
            "--shape-users", str(lc.peak_users()), "--shape-spawn-rate", str(lc.spawn_rate),
            "--shape-seconds", str(lc.duration_s()),  # steady, stress, soak (step uses its steps)
            "--step-users", str(lc.step_users), "--step-seconds", str(lc.step_seconds),
            *(["--allow-remote"] if b.allow_remote else []),
            "--csv", str(prefix), "--csv-full-history", "--html", str(prefix) + ".html", "--only-summary",
            "--stop-timeout", str(int(b.request_timeout_s)), "--exit-code-on-error", "0", "--loglevel", "WARNING"]


def _float(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def parse_stats(path: Path) -> dict[str, dict[str, float]]:
    """Locust's ``*_stats.csv``: per entry (e2e, ttft, tpot, itl, and 'aggregated'), count, failures,
    mean, median and percentiles in ms, requests per second, and (e2e) mean output tokens.

    Locust keeps response times in buckets (exact below 100 ms, to 10 ms below 1 s, to 100 ms above),
    so its percentiles carry that rounding; its means are exact."""
    if not path.is_file():
        raise BenchError(f"Locust wrote no statistics ({path} is missing): see locust.log beside it")
    out: dict[str, dict[str, float]] = {}
    names = {v: k for k, v in ENTRIES.items()}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = names.get((row.get("Type", ""), row.get("Name", "")))
            if key is None and row.get("Name") == "Aggregated":
                key = "aggregated"
            if key is None:
                continue
            entry = {"count": _float(row["Request Count"]), "failures": _float(row["Failure Count"]),
                     "mean_ms": _float(row["Average Response Time"]), "median_ms": _float(row["Median Response Time"]),
                     "min_ms": _float(row["Min Response Time"]), "max_ms": _float(row["Max Response Time"]),
                     "per_s": _float(row["Requests/s"])}
            entry.update({f"p{q[:-1]}_ms": _float(row.get(q, "")) for q in PERCENTILES})
            if key == "e2e":
                entry["mean_output_tokens"] = _float(row["Average Content Size"])
            out[key] = {k: v for k, v in entry.items() if v is not None}
    return out


def parse_failures(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [{"name": r.get("Name", ""), "error": r.get("Error", ""), "count": int(r.get("Occurrences") or 0)}
                for r in csv.DictReader(f)]


def headline(stats: dict[str, dict[str, float]], wall_s: float) -> dict[str, float]:
    """The figures a comparison reads: completed requests, throughput, latency percentiles (ms)."""
    e2e = stats.get("e2e", {})
    done = (e2e.get("count") or 0) - (e2e.get("failures") or 0)
    out = {"requests": e2e.get("count", 0), "failed": e2e.get("failures", 0), "completed": done,
           "request_throughput": done / wall_s if wall_s > 0 else 0.0,
           "output_throughput": done * e2e.get("mean_output_tokens", 0) / wall_s if wall_s > 0 else 0.0}
    for key in ("ttft", "tpot", "itl", "e2e"):
        for stat in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms"):
            if stat in stats.get(key, {}):
                out[f"{stat[:-3]}_{key}_ms"] = stats[key][stat]
    return out


def _progress_line(history: Path, t: float, total: float) -> str:
    last: dict[str, str] = {}
    if history.is_file():
        try:
            with history.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    if row.get("Name") == "Aggregated":
                        last = row
        except (OSError, csv.Error):
            pass
    if not last:
        return f"  {t:5.0f}/{total:.0f} s: starting"
    return (f"  {t:5.0f}/{total:.0f} s: {last.get('User Count', '?')} users, {last.get('Total Request Count', '?')} "
            f"entries, {last.get('Total Failure Count', '?')} failures")


def run_locust(cfg: ExperimentConfig, url: str, model: str, key: str | None, prompts: Path, out_dir: Path,
               progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run Locust headless for the profile (bounded: the profile's length plus a grace period; then
    SIGINT, then SIGKILL), sampling memory and Locust's CPU; return the parsed figures."""
    lc = cfg.bench.load
    prefix = out_dir / "locust"
    cmd = locust_command(cfg, url, model, prompts, prefix)
    (out_dir / "command.txt").write_text(" ".join(cmd) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop(KEY_VAR, None)
    if key:
        env[KEY_VAR] = key
    total = lc.duration_s()
    deadline = total + lc.grace_seconds
    progress(f"locust: profile {lc.profile}, {lc.peak_users()} users, {total:.0f} s (+{lc.grace_seconds:.0f} s grace), "
             f"{url} model {model}")
    start = time.perf_counter()
    with (out_dir / "locust.log").open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir)
        sampler = Sampler(lc.memory_every_s, proc.pid, cfg.bench.metrics_url)
        sampler.start()
        stopped = ""
        next_note = 15.0
        try:
            while proc.poll() is None:
                t = time.perf_counter() - start
                if t > deadline and not stopped:
                    stopped = "interrupted at the deadline"
                    proc.send_signal(signal.SIGINT)
                if t > deadline + 60:
                    stopped = "killed 60 s after the deadline"
                    proc.kill()
                    break
                if t >= next_note:
                    progress(_progress_line(Path(str(prefix) + "_stats_history.csv"), t, total))
                    next_note += 15.0
                time.sleep(0.5)
        except BaseException:
            proc.kill()
            raise
        finally:
            samples = sampler.stop()
        proc.wait(timeout=60)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, None) and not stopped:
        tail = (out_dir / "locust.log").read_text(encoding="utf-8", errors="replace")[-1500:]
        raise BenchError(f"Locust exited with status {proc.returncode}: {tail}")
    stats = parse_stats(Path(str(prefix) + "_stats.csv"))
    cpu = [s["loadgen_cpu_percent"] for s in samples if "loadgen_cpu_percent" in s]
    (out_dir / "samples.json").write_text(json.dumps(samples), encoding="utf-8")
    return {"wall_s": wall, "profile_s": total, "stopped": stopped or "profile ended", "stats": stats,
            "figures": headline(stats, wall), "failures": parse_failures(Path(str(prefix) + "_failures.csv")),
            "samples": samples,
            "loadgen_cpu_percent_mean": sum(cpu) / len(cpu) if cpu else None,
            "loadgen_cpu_percent_max": max(cpu) if cpu else None,
            **peaks(samples)}


def load_test(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``bench_load`` stage: one bounded Locust run of ``bench.load.profile`` against the endpoint."""
    import mlflow

    from app.tracking import finite, log_step_metrics, start_run

    lc = cfg.bench.load
    url, model, key = target(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = bench_dir(cfg) / "load" / f"{stamp}-{lc.profile}"
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = out_dir / "prompts.jsonl"
    n = write_prompts(cfg, prompts, progress)
    # `locust -f app/bench/locustfile.py` by hand finds the same prompts in the home.
    shared = bench_dir(cfg) / "prompts.jsonl"
    shared.write_text(prompts.read_text(encoding="utf-8"), encoding="utf-8")
    first = json.loads(prompts.read_text(encoding="utf-8").splitlines()[0])["messages"]
    probe(url, model, key, first)  # caches the prefix, as every later probe will find it
    before = probe(url, model, key, first)
    if not before["ok"]:
        raise BenchError(f"the endpoint does not answer before the load: {before['error']}")
    progress(f"{n} test-split prompts; reference answer taken; results in {out_dir}")
    tags = {"profile": lc.profile, "target": cfg.bench.target, **({"rerun_of": rerun_of} if rerun_of else {})}
    with start_run(cfg, "bench_load", config_path, tags=tags) as run:
        result = run_locust(cfg, url, model, key, prompts, out_dir, progress)
        after = probe(url, model, key, first)
        result["after"] = {"answers": after["ok"], "same_answer": after.get("text") == before["text"],
                           "error": after.get("error", "")}
        if lc.profile == "soak":
            skip = min(60.0, result["profile_s"] / 5)  # engines settle after their first requests
            result["memory"] = memory_slope(result["samples"], lc.leak_mib_per_hour, skip_s=skip)
            roles = sorted({k[len("rss_mib_"):] for s in result["samples"] for k in s if k.startswith("rss_mib_")}
                           - {"total"})
            result["memory"]["by_role"] = {
                r: memory_slope(result["samples"], lc.leak_mib_per_hour, key=f"rss_mib_{r}", skip_s=skip)
                .get("slope_mib_per_hour") for r in roles}
        summary = {k: v for k, v in result.items() if k != "samples"}
        summary.update({"url": url, "model": model, "prompts": n, "out_dir": str(out_dir),
                        "mlflow_run_id": run.info.run_id, "config": cfg.bench.model_dump(mode="json")})
        (out_dir / "summary.json").write_text(json.dumps(finite(summary), indent=2), encoding="utf-8")
        # The config is logged as params by start_run; what it resolved to goes in tags.
        mlflow.set_tags({"served_model": model, "peak_users": str(lc.peak_users()), "url": url})
        metrics = {k: float(v) for k, v in result["figures"].items()}
        metrics.update({"peak_rss_mib": result["peak_rss_mib"], "service_answers_after": float(after["ok"]),
                        "same_answer_after": float(result["after"]["same_answer"])})
        if result["loadgen_cpu_percent_mean"] is not None:
            metrics["loadgen_cpu_percent_mean"] = result["loadgen_cpu_percent_mean"]
        if "memory" in result and "slope_mib_per_hour" in result["memory"]:
            metrics["rss_slope_mib_per_hour"] = result["memory"]["slope_mib_per_hour"]
            mlflow.set_tag("memory_verdict", result["memory"]["verdict"])
        log_step_metrics(metrics, step=0)
        mlflow.log_artifacts(str(out_dir), "bench_load")
    progress(f"done: {summary['figures'].get('completed', 0):.0f} requests completed, "
             f"{summary['figures'].get('failed', 0):.0f} failed; service answers after the load: {after['ok']}")
    return summary
