"""What shadow mode adds to the user's latency: the experiment's public model with shadow off and at 100%.

    app ab start --set ab.shadow.enabled=true ...           # the experiment, running
    .venv/bin/python benchmarks/ab_shadow.py --set serving.port=8450 --concurrency 1 2 4 --requests 12

Against the running experiment (same config as `app ab start`): every request is sent to the baseline
(the split is set to the baseline alone for the run and put back afterwards), streamed, with a fixed
output length (``ignore_eos``). For each concurrency, in alternating order per repeat (A B, then B A),
the shadow fraction is set live to 0 and to 1 (at 1 every request is also sent to the shadow arm in
the background); TTFT and end-to-end latency percentiles and throughput are measured with the same
load generator as the serving sweep. Between phases it waits until no shadow call is in flight, so
one phase's shadow work does not land in the next. Prints the figures and the ratio shadow/no-shadow,
and writes a JSON (``--out``, default <home>/reports/benchmarks/ab_shadow-<time>.json).

On a CPU machine the shadow engine competes with the serving engine for the same cores; the figures
measure that cost, not only the ingress's bookkeeping. On GPUs (one engine per device) it is smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from app.ab.run import set_split, store_of
from app.config import load_config
from app.endpoint import base_url, headers
from app.serving.loadgen import benchmark_prompts, run_load, summarize


def wait_shadow_idle(url: str, hdr: dict[str, str], timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = httpx.get(f"{url}/v1/experiment", headers=hdr, timeout=10).json()
        if status.get("shadow_in_flight", 0) == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def wait_split(url: str, hdr: dict[str, str], fraction: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/experiment", headers=hdr, timeout=10).json()["shadow_fraction"] == fraction:
            return
        time.sleep(0.5)
    raise SystemExit(f"the ingress did not apply shadow fraction {fraction} within {timeout_s} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", "-c", type=Path)
    ap.add_argument("--set", "-s", action="append", default=[])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--requests", type=int, default=12, help="measured requests per phase")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    if not cfg.ab.shadow.enabled:
        raise SystemExit("start the experiment with ab.shadow.enabled=true (the shadow arm is chosen at start)")
    url, hdr = base_url(cfg.serving), headers(cfg.serving)
    store = store_of(cfg)
    original = store.latest_split(cfg.ab.experiment)
    store.close()
    alone = {a.name: float(a.name == cfg.ab.baseline) for a in cfg.ab.arms}
    prompts = benchmark_prompts(32)
    phases: dict[tuple[int, float], list[dict]] = {}
    try:
        for rep in range(args.repeats):
            for c in args.concurrency:
                for fraction in ((0.0, 1.0) if rep % 2 == 0 else (1.0, 0.0)):
                    set_split(cfg, alone, f"benchmark: shadow {fraction:g}", fraction)
                    wait_split(url, hdr, fraction)
                    wait_shadow_idle(url, hdr)
                    asyncio.run(run_load(url, cfg.ab.public_model, prompts, c, c, args.max_tokens, hdr, seed=rep))
                    before = wait_shadow_idle(url, hdr)["counters"]
                    results, wall = asyncio.run(run_load(url, cfg.ab.public_model, prompts, c, args.requests,
                                                         args.max_tokens, hdr, seed=100 + rep))
                    after = wait_shadow_idle(url, hdr)["counters"]
                    s = summarize(results, wall)
                    s["shadow"] = {k: after[k] - before[k] for k in after if k.startswith("shadow")}
                    phases.setdefault((c, fraction), []).append(s)
                    print(f"repeat {rep} c={c} shadow={fraction:g}: TTFT p50 {s['p50_ttft_ms']:.0f} ms, E2E p50 "
                          f"{s['p50_e2e_ms']:.0f} ms, {s['output_throughput']:.1f} tok/s, failed {s['failed']}, "
                          f"shadow {s['shadow']}", flush=True)
    finally:
        if original:
            set_split(cfg, original["weights"], "benchmark done: the split as it was", 0.0)
    rows = []
    for c in args.concurrency:
        def med(fraction: float, key: str) -> float:
            return statistics.median(p[key] for p in phases[(c, fraction)])

        row = {"concurrency": c}
        for key in ("p50_ttft_ms", "p95_ttft_ms", "p50_e2e_ms", "p95_e2e_ms", "output_throughput"):
            row[key] = {"off": med(0.0, key), "on": med(1.0, key), "ratio": med(1.0, key) / max(med(0.0, key), 1e-9)}
        rows.append(row)
    print("\nconcurrency | TTFT p50 off/on ms (x) | E2E p50 off/on ms (x) | E2E p95 off/on ms (x) | tok/s off/on (x)")
    for r in rows:
        print(f"{r['concurrency']:>11} | " + " | ".join(
            f"{r[k]['off']:.0f}/{r[k]['on']:.0f} ({r[k]['ratio']:.2f}x)" if "ms" in k else
            f"{r[k]['off']:.1f}/{r[k]['on']:.1f} ({r[k]['ratio']:.2f}x)"
            for k in ("p50_ttft_ms", "p50_e2e_ms", "p95_e2e_ms", "output_throughput")))
    out = args.out or cfg.paths.resolved_home() / "reports" / "benchmarks" / f"ab_shadow-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "phases": {f"c{c}-shadow{f:g}": v for (c, f), v in phases.items()},
                               "requests": args.requests, "max_tokens": args.max_tokens, "repeats": args.repeats},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
