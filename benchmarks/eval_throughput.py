"""Evaluation throughput: examples per second per model, answering and scoring, by request concurrency.

    .venv/bin/python benchmarks/eval_throughput.py -c configs/local.yaml
    .venv/bin/python benchmarks/eval_throughput.py -c configs/local.yaml --examples 64 --concurrency 1,4,8

The evaluation's own path: the test split's questions, the training prompt, greedy decoding with
evaluation.max_new_tokens, every model through the project's Serve app (deployed here when it
does not serve them yet) via ray.data.llm's HTTP processor. For each model and each concurrency
level (requests in flight), examples/s of answering; then examples/s of scoring (EM, F1, MiniLM
similarity, BLEU, ROUGE). The baseline is concurrency 1 in the same session (one request at a
time, as a naive evaluation loop sends them): the ratio shows what batching in the engine buys.
The JSON lands in <home>/reports/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    from transformers import AutoTokenizer

    from app.config import load_config
    from app.eval.answer import answer_all, prompts
    from app.eval.run import load_test_set, score, served_models
    from app.model_store import model_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=None)
    ap.add_argument("--set", "-s", action="append", default=[])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--concurrency", default="1,4,8")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.set, f"evaluation.max_examples={args.examples}"])
    log = lambda m: print(m, flush=True)  # noqa: E731
    base = model_store(cfg).resolve(cfg.model, progress=log)
    models = cfg.evaluation.model_list(cfg.model.name, cfg.training.output_model or f"{cfg.model.name}-lora")
    frame, name = load_test_set(cfg, log)
    messages = prompts(frame, cfg, AutoTokenizer.from_pretrained(base.path))
    deployed = served_models(cfg, models, log)
    levels = [int(x) for x in args.concurrency.split(",")]
    rows, answers = [], {}
    try:
        for m in models:
            for c in levels:
                run_cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"concurrency": c})})
                answers[m.name], errors, facts = answer_all(frame, messages, m, run_cfg, log)
                rows.append({"model": m.name, "concurrency": c, "examples": len(frame),
                             "seconds": facts["seconds"], "examples_per_s": facts["examples_per_s"],
                             "errors": facts["request_errors"]})
    finally:
        if deployed:
            from app.serving.manager import remove_app

            remove_app()
    scoring = []
    for m, ans in answers.items():
        t = time.perf_counter()
        score(frame, ans, cfg)
        seconds = time.perf_counter() - t
        scoring.append({"model": m, "examples": len(frame), "seconds": round(seconds, 2),
                        "examples_per_s": round(len(frame) / seconds, 1)})
    print(f"\n{name}: {len(frame)} examples, greedy, at most {cfg.evaluation.max_new_tokens} new tokens")
    print(f"{'model':32} {'concurrency':>11} {'examples/s':>11} {'vs c=' + str(levels[0]):>9} {'errors':>7}")
    for r in rows:
        ref = next(x for x in rows if x["model"] == r["model"] and x["concurrency"] == levels[0])
        r["ratio"] = round(r["examples_per_s"] / ref["examples_per_s"], 2) if ref["examples_per_s"] else None
        print(f"{r['model']:32} {r['concurrency']:>11} {r['examples_per_s']:>11.3f} {r['ratio']:>8}x {r['errors']:>7}")
    for s in scoring:
        print(f"scoring {s['model']}: {s['examples_per_s']} examples/s (all metrics, {s['seconds']} s)")
    out = cfg.paths.resolved_home() / "reports" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"eval_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"test_set": name, "answering": rows, "scoring": scoring}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
