"""Yield per request of each LLM generation setting, with the 135M model, on a real manual.

    app serve up -c configs/local.yaml
    .venv/bin/python benchmarks/generation_yield.py --docs ~/corpora/git-doc --chunks 40

The same chunks (round-robin over topics, as the build deals them) are asked about under each
setting through the running Serve endpoint; every reply goes through the build's own parsing and
quality checks (data.quality as configured, not loosened). Per setting it prints requests,
requests/s, malformed replies, accepted pairs per request and per chunk, and the top reject
reasons. No answer cache is shared between settings or with builds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

SETTINGS = {
    "pairs labelled x1 (old default)": {"mode": "pairs", "prompt_style": "labelled", "pairs_per_chunk": 1, "guided": False},
    "pairs labelled x3": {"mode": "pairs", "prompt_style": "labelled", "pairs_per_chunk": 3, "guided": False},
    "pairs json x1": {"mode": "pairs", "prompt_style": "json", "pairs_per_chunk": 1, "guided": False},
    "pairs json x1 guided (JSON schema)": {"mode": "pairs", "prompt_style": "json", "pairs_per_chunk": 1, "guided": True},
    "answer_first x3": {"mode": "answer_first", "guided": False},
    "answer_first x3 guided (regex) (new default)": {"mode": "answer_first", "guided": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", required=True, type=Path)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--only", default=None, help="comma-separated setting names (default: all)")
    args = ap.parse_args()

    import pandas as pd

    from app import cluster
    from app.config import load_config
    from app.data import build
    from app.data.quality import score_frame
    from app.model_store import model_store

    cfg = load_config(Path(args.config), [f"data.docs_dir={args.docs}"])
    stored = model_store(cfg).resolve(cfg.model, progress=lambda _: None)
    cluster.connect(cfg.ray)
    cluster.quiet_data_context()
    docs, _ = build.read_corpus(cfg, args.docs, stored.path / "tokenizer.json", lambda _: None)
    chunks = pd.DataFrame([c for x in docs for c in x["chunks"]])
    build.assign_topics(cfg, docs, chunks, lambda _: None)
    picked = build.sample_chunks(chunks, args.chunks, cfg.seed, cfg.data.min_chunk_tokens).to_dict("records")
    base, key = build.endpoint(cfg)
    from app.data.generate import plan_requests

    results = {}
    names = args.only.split(",") if args.only else list(SETTINGS)
    for name in names:
        g = cfg.data.generation.model_copy(update=SETTINGS[name])
        c = cfg.model_copy(update={"data": cfg.data.model_copy(update={"generation": g})})
        plans = [(chunk, plan_requests(chunk, g, cfg.model.name)) for chunk in picked]
        requests = [r for _, reqs in plans for r in reqs]
        with tempfile.TemporaryDirectory() as tmp:
            cache = build.GenerationCache(Path(tmp) / "cache.jsonl")
            t = time.time()
            answers = build._ask(c, requests, cache, stored.path, {"base": base, "key": key}, None)
            seconds = time.time() - t
            cache.close()
        rows = [row for chunk, reqs in plans for row in build._rows_for(chunk, reqs, answers, "llm:bench", g.mode)]
        scored = score_frame(pd.DataFrame(rows), cfg.data.quality)
        accepted = build._accepted_unique(scored)
        malformed = int(scored["reject_reason"].str.startswith("malformed").sum())
        reasons = Counter(build.reason_kind(r) for r in scored.loc[~scored["accepted"], "reject_reason"])
        results[name] = {"requests": len(requests), "seconds": round(seconds, 1),
                         "requests_per_s": round(len(requests) / seconds, 3), "candidates": len(scored),
                         "malformed": malformed, "accepted": accepted,
                         "accepted_per_request": round(accepted / max(len(requests), 1), 3),
                         "accepted_per_chunk": round(accepted / len(picked), 3),
                         "accepted_per_minute": round(60 * accepted / seconds, 1),
                         "top_rejects": dict(reasons.most_common(3))}
        print(json.dumps({name: results[name]}), flush=True)
    print(f"\n{len(picked)} chunks of {args.docs}, model {cfg.model.name}, endpoint {base}")
    print(f"{'setting':46} {'req':>5} {'req/s':>6} {'malformed':>9} {'accepted':>8} {'/req':>6} {'/chunk':>6} {'/min':>6}")
    for name, r in results.items():
        print(f"{name:46} {r['requests']:5d} {r['requests_per_s']:6.2f} {r['malformed']:9d} {r['accepted']:8d} "
              f"{r['accepted_per_request']:6.2f} {r['accepted_per_chunk']:6.2f} {r['accepted_per_minute']:6.1f}")


if __name__ == "__main__":
    main()
