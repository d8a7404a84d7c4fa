"""``app bench report``: the latest load runs, sweep and comparisons as one report with plots, the
targets checked, and recommendations derived from the measurements by the rules below.

Every recommendation names the rule that fired and the figures that made it fire; a rule whose
inputs were not measured says so instead of guessing. Every figure's source file is listed with
the command that reproduces it. Written to ``<home>/bench/report/<stamp>/`` (Markdown, HTML, PNG)
and logged to MLflow with the raw CSVs.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any, Callable

from app.bench.load import BenchError, bench_dir
from app.config import ExperimentConfig

# Thresholds of the rules (stated here, quoted in the report).
LOW_KV = 0.30  # KV-cache use below this while latency breaks the SLO: the batch is capped, not the memory
FULL_KV = 0.90  # above this: the KV cache is what limits the batch
LOADGEN_CPU = 25.0  # % of one core used by Locust: the load generator competes with the server
PRIMARY = ("output_throughput", "p95_ttft_ms", "p95_e2e_ms")  # what "better" means first in a comparison


def latest(folder: Path, name: str) -> Path | None:
    runs = sorted(p for p in folder.glob(f"*/{name}") if p.is_file()) if folder.is_dir() else []
    return runs[-1] if runs else None


def collect(cfg: ExperimentConfig) -> dict[str, Any]:
    """The newest run of each kind: load runs (one per profile), the sweep, the comparisons."""
    root = bench_dir(cfg)
    loads: dict[str, dict[str, Any]] = {}
    for path in sorted((root / "load").glob("*/summary.json")) if (root / "load").is_dir() else []:
        doc = json.loads(path.read_text(encoding="utf-8"))
        samples = path.with_name("samples.json")
        doc["samples"] = json.loads(samples.read_text(encoding="utf-8")) if samples.is_file() else []
        doc["source"] = str(path)
        loads[doc.get("config", {}).get("load", {}).get("profile") or path.parent.name.rsplit("-", 1)[-1]] = doc
    sweep_path = latest(root / "sweep", "points.json")
    compare_path = latest(root / "compare", "compare.json")
    suites_path = latest(root / "suites", "suites.json")
    out = {"loads": loads, "sweep": None, "compare": None, "suites": None}
    if suites_path:
        out["suites"] = json.loads(suites_path.read_text(encoding="utf-8")) | {"source": str(suites_path)}
    if sweep_path:
        out["sweep"] = json.loads(sweep_path.read_text(encoding="utf-8")) | {"source": str(sweep_path)}
    if compare_path:
        out["compare"] = json.loads(compare_path.read_text(encoding="utf-8")) | {"source": str(compare_path)}
    if not (loads or out["sweep"] or out["compare"] or out["suites"]):
        raise BenchError(f"no benchmark results under {root}: run `app bench load`, `app bench sweep`, "
                         "`app bench compare` or `app bench suites` first")
    return out


def recommendations(data: dict[str, Any], cfg: ExperimentConfig) -> list[dict[str, str]]:
    """Rules over the measurements, each returning what it saw and what to do."""
    out: list[dict[str, str]] = []
    sw = data.get("sweep")
    slo = cfg.bench.sweep.slo_p95_ttft_ms
    if sw and sw.get("points"):
        pts = sw["points"]
        if sw.get("saturated_at") and len(pts) > 1:
            prev, last = pts[-2], pts[-1]
            gain = last["output_throughput"] / prev["output_throughput"] - 1 if prev["output_throughput"] else 0
            out.append({"rule": "saturation", "finding": (
                f"output throughput stops rising past concurrency {prev['concurrency']} "
                f"({prev['output_throughput']:.1f} tok/s; {100 * gain:+.0f}% at {last['concurrency']}) while p95 TTFT "
                f"goes from {prev['p95_ttft_ms']:.0f} to {last['p95_ttft_ms']:.0f} ms"),
                "action": (f"more requests in flight only queue: cap each replica near {prev['concurrency']} "
                           "concurrent requests and add replicas (serving.num_replicas, or autoscaling) for more load")})
        elif len(pts) > 1:
            out.append({"rule": "saturation", "finding": f"throughput still rose at the last level "
                        f"({pts[-1]['concurrency']}): the sweep did not reach saturation",
                        "action": "add higher levels to bench.sweep.concurrencies"})
        broken = next((p for p in pts if slo is not None and p["p95_ttft_ms"] > slo), None)
        if broken is not None:
            kv = broken.get("max_kv_cache_usage")
            seen = f"p95 TTFT breaks the SLO ({slo:.0f} ms) at concurrency {broken['concurrency']} " \
                   f"({broken['p95_ttft_ms']:.0f} ms)"
            if kv is None:
                out.append({"rule": "slo-vs-kv", "finding": seen + "; KV-cache use was not measured",
                            "action": "set bench.metrics_url to a Ray node's metrics endpoint to tell batch "
                                      "limits from memory limits"})
            elif kv < LOW_KV:
                out.append({"rule": "slo-vs-kv", "finding": seen + f" while KV-cache use stays at {100 * kv:.0f}% "
                            f"(< {100 * LOW_KV:.0f}%)", "action": "the batch is capped, not the memory: raise "
                            "serving.max_num_seqs (if the CPU has headroom) or add replicas"})
            elif kv > FULL_KV:
                out.append({"rule": "slo-vs-kv", "finding": seen + f" with the KV cache {100 * kv:.0f}% full",
                            "action": "memory limits the batch: raise serving.kv_cache_gib or lower max_model_len"})
            else:
                out.append({"rule": "slo-vs-kv", "finding": seen + f" with KV-cache use at {100 * kv:.0f}%",
                            "action": "the engine is compute-bound at this load: add replicas or a larger machine; "
                                      f"size each replica for concurrency below {broken['concurrency']}"})
        elif slo is not None:
            out.append({"rule": "slo-vs-kv", "finding": f"p95 TTFT stays under the SLO ({slo:.0f} ms) at every level "
                        f"up to {pts[-1]['concurrency']}", "action": "none needed at the loads measured"})
    for profile, run in data["loads"].items():
        cpu = run.get("loadgen_cpu_percent_mean")
        if cpu is not None and cpu > LOADGEN_CPU:
            out.append({"rule": "loadgen-cpu", "finding": f"Locust used {cpu:.0f}% of a core in the {profile} run "
                        f"(> {LOADGEN_CPU:.0f}%)", "action": "on a small machine the load generator competes with "
                        "the server: run Locust on another machine (bench.url, bench.allow_remote) for capacity "
                        "figures"})
    stress = data["loads"].get("stress")
    if stress:
        failed = stress["figures"].get("failed", 0)
        after = stress.get("after", {})
        top = max(stress.get("failures") or [{"error": "", "count": 0}], key=lambda f: f["count"])
        recovered = "the service answered the same after it" if after.get("same_answer") else \
            f"the service did NOT answer the same after it ({after.get('error') or 'a different answer'})"
        if failed:
            out.append({"rule": "stress", "finding": f"{failed:.0f} of {stress['figures'].get('requests', 0):.0f} "
                        f"requests failed under stress (most: {top['error'][:120]}); {recovered}",
                        "action": "shed early instead of timing out late: lower serving.request_timeout_s for "
                                  "interactive clients and size replicas from the sweep"})
        else:
            out.append({"rule": "stress", "finding": f"no request failed under stress: all queued (p95 E2E "
                        f"{stress['figures'].get('p95_e2e_ms', 0):.0f} ms); {recovered}",
                        "action": "clients wait instead of failing: set serving.request_timeout_s to what they "
                                  "tolerate, so excess load is refused rather than served late"})
    soak = data["loads"].get("soak")
    if soak and soak.get("memory"):
        m = soak["memory"]
        verdict = m["verdict"]
        ci = m.get("ci95_mib_per_hour")
        seen = (f"resident memory slope {m.get('slope_mib_per_hour', 0):+.0f} MiB/h (95% CI {ci[0]:+.0f} to "
                f"{ci[1]:+.0f}) over {m.get('span_s', 0) / 60:.0f} min" if ci else m.get("reason", ""))
        roles = {r: v for r, v in (m.get("by_role") or {}).items() if v is not None}
        grower = max(roles, key=roles.get) if roles else None
        if grower:
            seen += f"; most of it in the {grower} ({roles[grower]:+.0f} MiB/h)"
        leak_action = "memory grows under steady load: find the process (samples.json per role) before running for days"
        if grower == "engines":
            leak_action = ("the engines grow: part of that can be the KV cache's pages touched for the first time "
                           "(bounded by serving.kv_cache_gib), which only a soak longer than a full pass over the "
                           "cache tells from a leak; rerun with a longer bench.load.soak_seconds before acting")
        action = {"leak": leak_action,
                  "no leak": "none: the slope's interval lies below the threshold",
                  "undecided": "lengthen bench.load.soak_seconds until the interval excludes the threshold"}[verdict]
        out.append({"rule": "soak", "finding": f"{verdict}: {seen} (threshold {m['threshold_mib_per_hour']:.0f} "
                    "MiB/h)", "action": action})
    for pair in (data.get("compare") or {}).get("pairs", []):
        worse, better = [], []
        for k, r in pair["ratios"].items():
            if not r.get("beyond_noise"):
                continue
            good = (r["ratio"] > 1) == r["higher_is_better"]
            (better if good else worse).append(f"{k} x{r['ratio']:.2f}")
        name = pair["name"]
        if pair["candidate"] == cfg.ab.public_model:
            t = pair["ratios"]["output_throughput"]
            ttft = pair["ratios"]["mean_ttft_ms"]
            out.append({"rule": "ab-overhead", "finding": f"the A/B ingress gives x{t['ratio']:.2f} output "
                        f"throughput and x{ttft['ratio']:.2f} mean TTFT of the direct endpoint "
                        f"({'beyond' if t.get('beyond_noise') else 'within'} the noise of {t['rounds']} rounds)",
                        "action": "none: the splitter's cost is within noise" if not worse else
                        "the splitter costs measurably: add ingress replicas (serving.num_ingress_replicas)"})
        elif worse:
            out.append({"rule": "comparison", "finding": f"{name}: worse beyond noise on {', '.join(worse)}",
                        "action": f"keep {pair['baseline']} for speed, or weigh this against the candidate's quality"})
        else:
            out.append({"rule": "comparison", "finding": f"{name}: " + (f"better on {', '.join(better)}, no worse on "
                        "any metric" if better else "no difference beyond the noise"), "action": "none"})
    out += suite_recommendations(data)
    return out


SERVE_OVERHEAD = 0.10  # Ray Serve may cost at most this share of the plain vLLM server's throughput


def _suite_rows(data: dict[str, Any], suite: str) -> list[dict[str, Any]]:
    res = ((data.get("suites") or {}).get("suites") or {}).get(suite) or {}
    return res.get("rows", []) if res.get("status") == "ok" else []


def _worst_serve_throughput(data: dict[str, Any]) -> dict[str, Any] | None:
    """serve_vs_vllm's throughput row with the lowest Serve / plain vLLM ratio (None: not measured)."""
    tput = [r for r in _suite_rows(data, "serve_vs_vllm") if r["figure"] == "output tok/s" and r["ratio"]]
    return min(tput, key=lambda r: r["ratio"]) if tput else None


def suite_recommendations(data: dict[str, Any]) -> list[dict[str, str]]:
    """Rules over the suites' rows (app.bench.suites)."""
    out: list[dict[str, str]] = []
    for name, res in ((data.get("suites") or {}).get("suites") or {}).items():
        if res.get("status") != "ok":
            out.append({"rule": f"suite {name}", "finding": f"not measured ({res.get('status')}): "
                        f"{res.get('reason', '')[:300]}", "action": "see the reason; `app bench suites` runs it alone"})
    worst = _worst_serve_throughput(data)
    if worst:
        if worst["ratio"] < 1 - SERVE_OVERHEAD:
            out.append({"rule": "serve-overhead", "finding": f"{worst['comparison']}: Ray Serve gives "
                        f"x{worst['ratio']:.2f} of the plain vLLM server's throughput (more than "
                        f"{100 * SERVE_OVERHEAD:.0f}% lost)", "action": "the proxy and ingress take CPU from the "
                        "engine: raise serving.stream_batching_interval_ms (fewer, larger stream messages), or give "
                        "Serve's processes their own cores"})
        else:
            out.append({"rule": "serve-overhead", "finding": f"Ray Serve keeps x{worst['ratio']:.2f} or more of the "
                        f"plain vLLM server's throughput at every level measured ({worst['comparison']} lowest)",
                        "action": "none: within the {:.0f}% budget".format(100 * SERVE_OVERHEAD)})
    for r in _suite_rows(data, "tuned_vs_default")[:1]:
        if r["ratio"] is None:
            continue
        if r["beyond_noise"] and r["ratio"] > 1:
            action = "keep the serving section" + (" (the +30% goal is not reached: try serve_sweep.grid)"
                                                   if r["ratio"] < 1.3 else "")
        elif r["beyond_noise"]:
            action = "vLLM's defaults are faster here: re-run `app serve sweep` with a grid and take its winner"
        else:
            action = "no difference beyond the rounds' spread: add rounds (bench.suites.rounds) before concluding"
        out.append({"rule": "tuned-serving", "finding": f"the serving section gives x{r['ratio']:.2f} of vLLM's "
                    f"defaults' best throughput under the SLO ({r['candidate']:.1f} vs {r['baseline']:.1f} tok/s)",
                    "action": action})
    int4 = _suite_rows(data, "int4_vs_bf16")
    for comparison in dict.fromkeys(r["comparison"] for r in int4):
        rows = {r["figure"]: r for r in int4 if r["comparison"] == comparison}
        size = rows.get("checkpoint MiB")
        tput = next((r for f, r in rows.items() if f.endswith("output tok/s") and not f.startswith("c=1 ")), None)
        if size and tput and size["ratio"] and tput["ratio"]:
            slower = tput["ratio"] < 1
            out.append({"rule": "int4-serving", "finding": f"{comparison}: checkpoint x{size['ratio']:.2f}, "
                        f"{tput['figure']} x{tput['ratio']:.2f}", "action": (
                            "INT4 saves disk and memory but decodes slower under load here (dequantization "
                            "dominates a small model on CPU): serve bf16 where throughput matters, INT4 where "
                            "memory does" if slower else "INT4 is no slower under load: serve it where its accuracy "
                            "drop (app quantize report) is acceptable")})
    for r in _suite_rows(data, "quality")[:1]:
        out.append({"rule": "quality", "finding": f"{r['comparison']}: {r['figure']} {r['baseline']:.3f} -> "
                    f"{r['candidate']:.3f} (95% CI of the difference [{r['spread'][0]:+.3f}, {r['spread'][1]:+.3f}])",
                    "action": ("the fine-tuned model answers better on these questions; check them per origin and "
                               "on human-written questions before reading it as more correct" if r["beyond_noise"] and r["spread"][0] > 0 else
                               "no quality gain beyond noise: do not pay the fine-tuned model's cost for it")})
    return out


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks the report states as met or not met."""
    rows: list[dict[str, Any]] = []
    stress = data["loads"].get("stress")
    if stress:
        rows.append({"target": "the service answers correctly after a stress run", "met": bool(
            stress.get("after", {}).get("same_answer")), "figure": json.dumps(stress.get("after", {}))})
    soak = data["loads"].get("soak")
    if soak and soak.get("memory"):
        rows.append({"target": "no memory leak under a soak", "met": soak["memory"]["verdict"] == "no leak",
                     "figure": soak["memory"]["verdict"]})
    for pair in (data.get("compare") or {}).get("pairs", []):
        worse = [k for k, r in pair["ratios"].items()
                 if r.get("beyond_noise") and (r["ratio"] > 1) != r["higher_is_better"]]
        better = [k for k in PRIMARY if pair["ratios"][k].get("beyond_noise") and
                  (pair["ratios"][k]["ratio"] > 1) == pair["ratios"][k]["higher_is_better"]]
        rows.append({"target": f"{pair['name']}: no worse than the baseline beyond noise on every metric, better on "
                     "a primary one", "met": not worse and bool(better),
                     "figure": f"worse: {worse or 'none'}; better (primary): {better or 'none'}"})
    for r in _suite_rows(data, "tuned_vs_default")[:1]:
        if r["ratio"] is not None:
            rows.append({"target": "tuned serving: +30% best throughput under the SLO over vLLM's defaults, beyond "
                         "noise", "met": bool(r["beyond_noise"]) and r["ratio"] >= 1.3,
                         "figure": f"x{r['ratio']:.3f}, spread {_spread(r)}"})
    worst = _worst_serve_throughput(data)
    if worst:
        rows.append({"target": f"Ray Serve within {100 * SERVE_OVERHEAD:.0f}% of the plain vLLM server's throughput",
                     "met": worst["ratio"] >= 1 - SERVE_OVERHEAD, "figure": f"lowest x{worst['ratio']:.3f} "
                     f"({worst['comparison']}; one round)"})
    for r in _suite_rows(data, "vllm_vs_hf"):
        rows.append({"target": "vLLM faster than transformers generate beyond noise", "met": bool(r["beyond_noise"])
                     and r["ratio"] > 1, "figure": f"x{r['ratio']:.2f}, per-round {_spread(r)}"})
    for r in _suite_rows(data, "int4_vs_bf16"):
        if r["figure"] == "checkpoint MiB" and r["ratio"]:
            rows.append({"target": f"{r['comparison']}: checkpoint >= 40% smaller", "met": r["ratio"] <= 0.6,
                         "figure": f"x{r['ratio']:.2f} ({r['candidate']:.0f} vs {r['baseline']:.0f} MiB)"})
    return rows


def _spread(r: dict[str, Any]) -> str:
    sp = r.get("spread")
    return f"[{sp[0]:.3g}, {sp[1]:.3g}]" if sp else "none measured"


def _save(fig, ax, path: Path, title: str, xlabel: str | None, ylabel: str) -> str:
    import matplotlib.pyplot as plt

    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plots(data: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    sw = data.get("sweep")
    if sw and sw.get("points"):
        pts = sw["points"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("p50_e2e_ms", "p50 E2E"), ("p95_e2e_ms", "p95 E2E"), ("p95_ttft_ms", "p95 TTFT")):
            ax.plot([p["output_throughput"] for p in pts], [p[key] for p in pts], marker="o", label=label)
        for p in pts:
            ax.annotate(f"c={p['concurrency']}", (p["output_throughput"], p["p95_e2e_ms"]), fontsize=7)
        files.append(_save(fig, ax, out / "latency_throughput.png", "latency vs throughput (sweep)",
                           "output tokens/s", "latency (ms)"))
    if data["loads"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        qs = ("p50", "p90", "p95", "p99")
        width = 0.8 / max(1, len(data["loads"]))
        for i, (profile, run) in enumerate(sorted(data["loads"].items())):
            vals = [run["figures"].get(f"{q}_ttft_ms", 0) for q in qs]
            ax.bar([j + i * width for j in range(len(qs))], vals, width, label=f"{profile} TTFT")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(qs))], qs)
        files.append(_save(fig, ax, out / "ttft_percentiles.png", "TTFT percentiles per load profile (Locust)",
                           None, "ms"))
        fig, ax = plt.subplots(figsize=(7, 4))
        for profile, run in sorted(data["loads"].items()):
            s = [x for x in run.get("samples", []) if "rss_mib_total" in x]
            if s:
                ax.plot([x["t_s"] for x in s], [x["rss_mib_total"] for x in s], label=profile)
        files.append(_save(fig, ax, out / "memory.png", "resident memory over time", "seconds",
                           "deployment RSS (MiB)"))
    return files


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(data: dict[str, Any], recs: list[dict[str, str]], checks: list[dict[str, Any]], plots: list[str],
             config_path: Path | None) -> str:
    cfg_arg = f" -c {config_path}" if config_path else ""
    md = ["# Performance report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}. Every figure below comes "
          "from the file named beside it; the command under each section reproduces it on this machine.", ""]
    md += ["## Targets", "", _table([[c["target"], "met" if c["met"] else "**not met**", c["figure"]]
                                     for c in checks], ["target", "result", "figure"]) if checks else "(none measured)",
           ""]
    md += ["## Recommendations", ""]
    md += [f"- **{r['rule']}**: {r['finding']}. -> {r['action']}." for r in recs] or ["(no rule fired)"]
    md += ["", f"Rules (app/bench/report.py): KV-cache use below {100 * LOW_KV:.0f}% while p95 TTFT breaks the SLO "
           f"means a capped batch; above {100 * FULL_KV:.0f}% a memory limit; Locust above {LOADGEN_CPU:.0f}% of a "
           "core competes with the server; a comparison counts only ratios whose 95% interval over rounds "
           "excludes 1.", ""]
    if data["loads"]:
        md += ["## Load runs (Locust)", ""]
        rows = []
        for profile, run in sorted(data["loads"].items()):
            f = run["figures"]
            rows.append([profile, f"{f.get('completed', 0):.0f}/{f.get('requests', 0):.0f}",
                         _fmt(f.get("request_throughput", 0)), _fmt(f.get("output_throughput", 0)),
                         *(_fmt(f.get(k, "-")) for k in ("p50_ttft_ms", "p95_ttft_ms", "p50_tpot_ms", "p95_tpot_ms",
                                                         "p95_e2e_ms")),
                         _fmt(run.get("peak_rss_mib", 0)), _fmt(run.get("loadgen_cpu_percent_mean") or "-"),
                         run["source"]])
        md += [_table(rows, ["profile", "completed", "req/s", "tok/s", "p50 TTFT", "p95 TTFT", "p50 TPOT",
                             "p95 TPOT", "p95 E2E", "peak RSS MiB", "Locust CPU %", "source"]), "",
               "Times in ms; Locust's percentiles are bucketed (to 10 ms between 100 ms and 1 s, to 100 ms above).", "",
               "```bash"] + [f"app bench load{cfg_arg} --profile {p}" for p in sorted(data["loads"])] + ["```", ""]
    sw = data.get("sweep")
    if sw:
        md += ["## Concurrency sweep", ""]
        md += [_table([[p["concurrency"], _fmt(p["request_throughput"]), _fmt(p["output_throughput"]),
                        _fmt(p["goodput"]), *(_fmt(p[k]) for k in ("p50_ttft_ms", "p90_ttft_ms", "p95_ttft_ms",
                                                                    "p99_ttft_ms", "p95_tpot_ms", "p95_e2e_ms")),
                        _fmt(p.get("max_kv_cache_usage", "-")), _fmt(p["peak_rss_mib"])] for p in sw["points"]],
                      ["c", "req/s", "tok/s", "goodput", "p50 TTFT", "p90 TTFT", "p95 TTFT", "p99 TTFT", "p95 TPOT",
                       "p95 E2E", "max KV use", "peak RSS MiB"]), "",
               f"Source: {sw['source']}; saturated at: {sw.get('saturated_at') or 'not reached'}.", "",
               "```bash", f"app bench sweep{cfg_arg}", "```", ""]
    cmp_ = data.get("compare")
    if cmp_:
        md += ["## Comparisons (interleaved rounds; candidate / baseline)", ""]
        rows = []
        for pair in cmp_["pairs"]:
            for k, r in pair["ratios"].items():
                ci = r.get("ci95")
                rows.append([pair["name"], k, _fmt(r.get("ratio")), f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "-",
                             f"{_fmt(r.get('min'))}-{_fmt(r.get('max'))}", "yes" if r.get("beyond_noise") else "no",
                             "higher" if r["higher_is_better"] else "lower"])
        md += [_table(rows, ["pair", "figure", "ratio", "95% CI", "range", "beyond noise", "better is"]), "",
               f"Source: {cmp_['source']}.", "", "```bash", f"app bench compare{cfg_arg}", "```", ""]
    md += suites_markdown(data.get("suites"))
    md += [f"![{p}]({p})" for p in plots]
    return "\n".join(md) + "\n"


def suites_markdown(suites: dict[str, Any] | None) -> list[str]:
    if not suites:
        return []
    md = ["## Comparisons measured by their own stage or benchmark (`app bench suites`)", "",
          "Ratio = candidate / baseline; for quality the figures are means and the spread is the 95% interval "
          "of the paired difference. Each suite's command reproduces its rows.", ""]
    for name, res in suites["suites"].items():
        md += [f"### {name}: {res['status']} ({res.get('seconds', 0):.0f} s)", ""]
        if res["status"] != "ok":
            md += [f"Not measured: {res.get('reason', '')}", ""]
            continue
        rows = [[r["comparison"], r["figure"], _fmt(r["baseline"]), _fmt(r["candidate"]), _fmt(r["ratio"]),
                 _spread(r), {True: "yes", False: "no", None: "-"}[r["beyond_noise"]],
                 "higher" if r["higher_is_better"] else "lower", r["note"]] for r in res["rows"]]
        md += [_table(rows, ["comparison", "figure", "baseline", "candidate", "ratio", "spread", "beyond noise",
                             "better is", "note"]), ""]
        if res.get("note"):
            md += [f"Note: {res['note']}.", ""]
        if res.get("how"):
            md += [f"Evaluation {res.get('evaluation')}: {res['how']}.", ""]
        md += ["```bash", res["command"], "```", ""]
    md += [f"Source: {suites['source']}.", ""]
    return md


def to_html(md: str, plots: list[str], folder: Path) -> str:
    """A self-contained page: the Markdown as preformatted text and the plots (in ``folder``) inline."""
    import base64

    out = folder
    imgs = "".join(f"<h3>{html.escape(p)}</h3><img alt='{html.escape(p)}' src='data:image/png;base64,"
                   f"{base64.b64encode((out / p).read_bytes()).decode()}'>" for p in plots)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Performance report</title></head><body>"
            f"<pre style='white-space: pre-wrap'>{html.escape(md)}</pre>{imgs}</body></html>")


def report(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
           progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``bench_report`` stage: collect, judge, write and log the performance report."""
    import mlflow

    from app.tracking import finite, start_run

    data = collect(cfg)
    out = bench_dir(cfg) / "report" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    recs = recommendations(data, cfg)
    checks = targets(data)
    plots = _plots(data, out)
    md = markdown(data, recs, checks, plots, config_path)
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(to_html(md, plots, out), encoding="utf-8")
    doc = {"targets": checks, "recommendations": recs, "out_dir": str(out),
           "sources": {"loads": {p: r["source"] for p, r in data["loads"].items()},
                       "sweep": (data.get("sweep") or {}).get("source"),
                       "compare": (data.get("compare") or {}).get("source"),
                       "suites": (data.get("suites") or {}).get("source")}}
    (out / "report.json").write_text(json.dumps(finite(doc), indent=2), encoding="utf-8")
    with start_run(cfg, "bench_report", config_path, tags={"rerun_of": rerun_of} if rerun_of else {}) as run:
        mlflow.log_artifacts(str(out), "bench_report")
        for src in [r["source"] for r in data["loads"].values()]:
            folder = Path(src).parent
            for csv_file in folder.glob("locust*.csv"):
                mlflow.log_artifact(str(csv_file), f"bench_report/raw/{folder.name}")
        mlflow.log_metric("targets_met", sum(c["met"] for c in checks))
        mlflow.log_metric("targets_total", len(checks))
        doc["mlflow_run_id"] = run.info.run_id
    progress(f"report: {out / 'report.md'} ({len(recs)} recommendations, "
             f"{sum(c['met'] for c in checks)}/{len(checks)} targets met)")
    return doc
