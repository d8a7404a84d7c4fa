"""Deploy-to-ready on Ray Serve for several engine paths, one after the other, with the gate's cost.

    .venv/bin/python benchmarks/time_to_ready.py -c configs/local.yaml
    .venv/bin/python benchmarks/time_to_ready.py -c configs/local.yaml --rounds 2 \
        --paths "old-default=dtype:float32" "default=" "eager=engine_mode:eager"

Each path is the serving section with a few fields changed (``name=field:value,...``; ``name=`` is the
section as configured). Every deployment goes through ``app.serving.manager.deploy`` on the same local
cluster, alone (the previous one removed and its engines gone), and is timed from ``serve.run`` to every
model answering, then through the correctness gate. Prints a table; JSON to <home>/reports/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_PATHS = [
    "old-default(fp32-compiled)=dtype:float32",
    "default(bf16-compiled)=",
    "bf16-eager=engine_mode:eager",
]


def parse_path(text: str) -> tuple[str, dict]:
    """'name=field:value,...' -> (name, {field: value}); values are YAML (null, 100, float32)."""
    import yaml

    name, _, fields = text.partition("=")
    changes = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition(":")
        changes[key.strip()] = yaml.safe_load(value.strip())
    return name.strip(), changes


def main() -> None:
    import ray
    from ray import serve

    from app import cluster
    from app.config import load_config
    from app.serving.config import ServingConfig
    from app.serving.manager import APP_NAME, ServeError, cluster_address, deploy, remove_app

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=None)
    ap.add_argument("--set", "-s", action="append", default=[])
    ap.add_argument("--paths", nargs="+", default=DEFAULT_PATHS)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    home = cfg.paths.resolved_home()
    paths = [parse_path(p) for p in args.paths]
    cluster.join_quietly(cluster_address(cfg, print))
    runs: dict[str, list[dict]] = {name: [] for name, _ in paths}
    for rnd in range(args.rounds):
        for name, changes in paths:
            serving = ServingConfig.model_validate(cfg.serving.model_dump() | changes)
            if APP_NAME in serve.status().applications:
                remove_app()
            print(f"[round {rnd + 1}] {name}: {changes or 'as configured'}", flush=True)
            started = time.time()
            try:
                info = deploy(home, serving, progress=lambda m: print("  " + m, flush=True))
            except ServeError as exc:
                runs[name].append({"error": str(exc)[:500]})
                print(f"  failed: {str(exc)[:300]}", flush=True)
                continue
            total = time.time() - started
            # deploy_seconds: serve.run (which returns once replicas are up) until every model answered.
            runs[name].append({"ready_s": info["deploy_seconds"], "gate_s": info.get("gate_seconds", 0),
                               "total_s": round(total, 1), "gate": info.get("gate")})
    if APP_NAME in serve.status().applications:
        remove_app()
    ray.shutdown()
    print("\npath | rounds | deploy-to-ready s (median, min-max) | gate s | ready + gate s")
    rows = []
    for name, _ in paths:
        ok = [r for r in runs[name] if "error" not in r]
        if not ok:
            print(f"{name} | failed: {runs[name][0]['error'][:200] if runs[name] else ''}")
            rows.append({"path": name, "error": True})
            continue
        ready = [r["ready_s"] for r in ok]
        row = {"path": name, "rounds": len(ok), "ready_s": statistics.median(ready), "ready_min": min(ready),
               "ready_max": max(ready), "gate_s": statistics.median(r["gate_s"] for r in ok),
               "total_s": statistics.median(r["total_s"] for r in ok)}
        rows.append(row)
        print(f"{name} | {len(ok)} | {row['ready_s']:.0f} ({row['ready_min']:.0f}-{row['ready_max']:.0f}) | "
              f"{row['gate_s']:.1f} | {row['total_s']:.0f}")
    out = home / "reports" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"time_to_ready-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"rows": rows, "runs": runs}, indent=2))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
