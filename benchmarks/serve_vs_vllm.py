"""Ray Serve LLM endpoint vs the plain vLLM OpenAI server: same model, engine arguments and load.

    .venv/bin/python benchmarks/serve_vs_vllm.py -c configs/local.yaml
    .venv/bin/python benchmarks/serve_vs_vllm.py -c configs/local.yaml \
        --serving ~/.domain_llm/reports/serve_sweep/<time>/tuned_serving.yaml

One after the other on this machine, in one session: the app's Serve deployment (proxy, our ingress
with its request guard, Ray's OpenAI ingress, the LLMServer replica, the engine) in each Serve
variant (``--variants "name=field:value,..."``: serving fields changed on the Serve side only, e.g.
``"interval100=stream_batching_interval_ms:100"``), then `python -m vllm.entrypoints.openai.api_server`
with the serving section's engine arguments, OpenMP binding and KV-cache space. Each gets the same warm-up and the same streamed closed-loop load (fixed output
length) at each concurrency. Prints throughput and latency side by side with ratios; the JSON
lands in <home>/reports/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import ray
    import yaml
    from ray import serve

    from app.config import load_config
    from app.serving.config import ServingConfig
    from app.serving.builder import engine_env, threads_binds, vllm_server_command
    from app.serving.manager import APP_NAME, cluster_address, deploy, free_port, wait_engines_gone, wait_ready
    from app.serving.sweep import measure
    from app.model_store import model_store
    from benchmarks.time_to_ready import parse_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=None)
    ap.add_argument("--set", "-s", action="append", default=[])
    ap.add_argument("--serving", type=Path, help="a serving section YAML (e.g. a sweep's tuned_serving.yaml)")
    ap.add_argument("--concurrencies", default="1,4,16,32")
    ap.add_argument("--requests-per-level", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--variants", nargs="+", default=["default="],
                    help="Serve settings to measure, each 'name=field:value,...' ('name=': as configured)")
    ap.add_argument("--out", type=Path, help="JSON report path (default: <home>/reports/benchmarks/serve_vs_vllm-<time>.json)")
    args = ap.parse_args()
    variants = [parse_path(v) for v in args.variants]

    sets = list(args.set) + ["serve_sweep.slo_p95_ttft_ms=1e9", "serve_sweep.slo_p95_tpot_ms=1e9",
                             f"serve_sweep.concurrencies=[{args.concurrencies}]",
                             f"serve_sweep.requests_per_level={args.requests_per_level}",
                             f"serve_sweep.max_tokens={args.max_tokens}"]
    cfg = load_config(args.config, sets)
    serving = cfg.serving
    if args.serving:
        serving = ServingConfig.model_validate(yaml.safe_load(args.serving.read_text())["serving"])
    model = serving.models[0]
    serving = serving.model_copy(update={"models": [model], "api_key_env": None, "api_key_file": None})
    path = model_store(cfg).get(model).path
    home = cfg.paths.resolved_home()
    out = home / "reports" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    log = print

    results: dict[str, list[dict]] = {}
    ready: dict[str, float] = {}
    ray.init(address=cluster_address(cfg, log), log_to_driver=False)
    for name, changes in variants:
        variant = ServingConfig.model_validate(serving.model_dump() | changes)
        info = deploy(home, variant, log, replace=True)
        ready[name] = info["deploy_seconds"]
        log(f"Ray Serve {name} ready ({info['deploy_seconds']:.0f} s); measuring")
        results[name] = measure(f"http://{serving.host}:{serving.port}", model, cfg.serve_sweep, {}, cfg.seed, log)
        serve.delete(APP_NAME, _blocking=True)
        wait_engines_gone()

    port = free_port()
    env = {**os.environ, **engine_env(serving, threads_binds(serving)[0])}
    cmd = vllm_server_command(model, path, serving, port)
    log("plain vLLM: " + " ".join(cmd))
    started = time.time()
    with open(out / "vllm_server.log", "w") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(serving.model_copy(update={"port": port}), serving.ready_timeout_s, log)
        ready["plain_vllm"] = round(time.time() - started, 1)
        log(f"plain vLLM ready ({ready['plain_vllm']:.0f} s); measuring")
        results["plain_vllm"] = measure(f"http://{serving.host}:{port}", model, cfg.serve_sweep, {}, cfg.seed, log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        wait_engines_gone()

    rows = [{
        "serve_variant": name, "concurrency": a["concurrency"],
        "serve_tok_s": round(a["output_throughput"], 1), "vllm_tok_s": round(b["output_throughput"], 1),
        "throughput_ratio": round(a["output_throughput"] / b["output_throughput"], 3),
        "serve_p50_ttft_ms": round(a["p50_ttft_ms"]), "vllm_p50_ttft_ms": round(b["p50_ttft_ms"]),
        "ttft_overhead_ms": round(a["p50_ttft_ms"] - b["p50_ttft_ms"]),
        "serve_p95_e2e_ms": round(a["p95_e2e_ms"]), "vllm_p95_e2e_ms": round(b["p95_e2e_ms"]),
    } for name, _ in variants for a, b in zip(results[name], results["plain_vllm"])]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {"model": model, "serving": serving.model_dump(mode="json"), "variants": dict(variants),
              "ready_s": ready, "rows": rows, "raw": results}
    report_path = args.out or out / f"serve_vs_vllm-{stamp}.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    print(f"\nRay Serve vs plain vLLM server, {model}, {args.max_tokens} output tokens, streamed; ready after {ready} s")
    head = list(rows[0])
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(r[k]) for k in head))
    print(f"report: {report_path}")


if __name__ == "__main__":
    main()
