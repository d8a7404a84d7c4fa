"""Dataset-build throughput on Ray Data, and how it scales with the stages' concurrency.

    .venv/bin/python benchmarks/dataset_throughput.py --concurrency 1,2,4
    .venv/bin/python benchmarks/dataset_throughput.py --concurrency 1,2,4 --llm-chunks 24   # + LLM stage

Each concurrency level runs, in one Ray session on this machine:
  * read + parse + chunk + extract (Ray Data tasks) over the embedded corpus: documents/s, chunks/s;
  * quality scoring with all-MiniLM-L6-v2 (Ray Data actors) over the extracted pairs: pairs/s;
  * with --llm-chunks N: LLM generation through the running Serve endpoint (`app serve up` first)
    with `data.generation.concurrency` = the level: requests/s and candidate pairs/s.
Ratios are against concurrency 1 from the same run. The Ray session gets as many logical CPUs as
the highest level, so the level (not the CPU count) limits parallelism; the physical core count is
printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated Ray Data concurrency levels")
    parser.add_argument("--llm-chunks", type=int, default=0, help="chunks sent to the LLM per level (0: skip)")
    parser.add_argument("--skip-quality", action="store_true", help="skip the quality-scoring stage")
    parser.add_argument("--batch-size", type=int, default=None, help="override data.generation.batch_size")
    parser.add_argument("--config", default=None, help="experiment YAML (default: built-in defaults)")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    import ray

    from app.config import load_config
    from app import cluster
    from app.data import build
    from app.data.corpus import ensure_default_corpus
    from app.model_store import model_store

    cfg = load_config(args.config, [])
    home = cfg.paths.resolved_home()
    root = ensure_default_corpus(home, progress=lambda _: None)
    stored = model_store(cfg).resolve(cfg.model, progress=lambda _: None)
    quiet = lambda _: None  # noqa: E731
    if args.llm_chunks:
        from app.serving.manager import attach

        if not attach(cfg):
            raise SystemExit("--llm-chunks needs the Serve endpoint: run `app serve up` first")
    else:
        ray.init(address="local", num_cpus=max(levels), include_dashboard=False, log_to_driver=False)
    cluster.quiet_data_context()
    results = []
    for level in levels:
        c = cfg.model_copy(deep=True)
        c.data.concurrency = level
        c.data.generation.concurrency = level
        t = time.perf_counter()
        docs, _ = build.read_corpus(c, root, stored.path / "tokenizer.json", quiet)
        read_s = time.perf_counter() - t
        pairs = [p for d in docs for p in d["extracted"]]
        n_chunks = sum(len(d["chunks"]) for d in docs)
        row = {"concurrency": level, "documents": len(docs), "chunks": n_chunks, "pairs": len(pairs),
               "read_chunk_extract_s": round(read_s, 2), "chunks_per_s": round(n_chunks / read_s, 1)}
        if not args.skip_quality:
            t = time.perf_counter()
            build.score_pairs(c, pairs)
            score_s = time.perf_counter() - t
            row.update(quality_s=round(score_s, 2), pairs_scored_per_s=round(len(pairs) / score_s, 1))
        if args.llm_chunks:
            import pandas as pd

            chunks = pd.DataFrame([ch for d in docs for ch in d["chunks"]])
            # Exactly the first --llm-chunks chunks, in one pass: no target to stop at or fail on.
            c.data.generation.max_chunks = c.data.generation.min_chunks = args.llm_chunks
            c.data.generation.estimate_requests = 10**6
            c.data.target_pairs = 1
            if args.batch_size:
                c.data.generation.batch_size = args.batch_size
            t = time.perf_counter()
            scored, info = build.generate_pairs(c, chunks, stored.path, quiet)
            gen_s = time.perf_counter() - t
            ok = scored[scored["parse_error"] == ""] if len(scored) else scored
            row.update(llm_requests=info["requests"], llm_s=round(gen_s, 1),
                       llm_requests_per_s=round(info["requests"] / gen_s, 3),
                       llm_pairs_per_s=round(len(ok) / gen_s, 3), llm_request_errors=info["request_errors"])
        results.append(row)
        print(json.dumps(row), flush=True)
    base = results[0]
    print(f"\nphysical cores: {os.cpu_count()}; ratios vs concurrency {base['concurrency']}:")
    for r in results:
        line = f"  c={r['concurrency']}: chunks/s {r['chunks_per_s']} ({r['chunks_per_s'] / base['chunks_per_s']:.2f}x)"
        if "pairs_scored_per_s" in r:
            line += f", pairs scored/s {r['pairs_scored_per_s']} ({r['pairs_scored_per_s'] / base['pairs_scored_per_s']:.2f}x)"
        if "llm_requests_per_s" in r:
            line += (f", LLM requests/s {r['llm_requests_per_s']} "
                     f"({r['llm_requests_per_s'] / base['llm_requests_per_s']:.2f}x), LLM pairs/s {r['llm_pairs_per_s']}")
        print(line)


if __name__ == "__main__":
    main()
