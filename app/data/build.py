"""`app dataset build`: documents -> chunks -> QA pairs (extracted + LLM) -> quality -> review -> splits.

Ray Data runs the per-item work (parsing and chunking documents, LLM requests, embedding-based
quality scoring); the driver does what needs every pair at once (deduplication, review overrides,
grouped splits, the leakage check) and writes a versioned dataset with its manifest, logged to
MLflow as artifacts and dataset inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pandas as pd

from app import cluster
from app.config import ExperimentConfig
from app.data.corpus import ensure_default_corpus
from app.data.generate import (
    pairs_from_output,
    plan_requests,
    question_rows,
    vllm_processor,
)
from app.data.ingest import list_documents, process_document
from app.data.quality import QualityScorer, deduplicate, score_frame
from app.data.review import ReviewStore
from app.data.splits import (
    SPLITS,
    LeakageError,
    assign_splits,
    check_leakage,
    leakage_message,
    near_duplicate_links,
)
from app.datasets import (
    PAIR_KEYS,
    DatasetError,
    datasets_root,
    normalize_text,
    partial_folder,
    publish_latest,
    remove_stale_partials,
    write_atomic,
)
from app.embed import embed
from app.endpoint import ChatRequester, base_url, bearer, external_endpoint, serving_key
from app.model_store import model_store
from app.serving.builder import engine_args
from app.serving.manager import ensure_served, remove_app
from app.tracking import hash_path, log_step_metrics, start_run

# Deferred imports: matplotlib, mlflow, ray, sklearn are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

SCORES = ("score_lexical_grounding", "score_semantic_grounding", "score_question_grounding", "score_relevance",
          "score_answer_rank")
OUTPUT_COLUMNS = (*PAIR_KEYS, *SCORES, "review_status", "reviewer")


# -- stages ------------------------------------------------------------------------------------


def read_corpus(cfg: ExperimentConfig, root: Path, tokenizer_file: Path, progress: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """(documents with their chunks and extracted pairs, skipped files) via Ray Data."""
    import ray

    d = cfg.data
    exclude = () if d.docs_dir else ("README.md", "MANIFEST.json")
    files, skipped = list_documents(root, d.extensions, d.max_docs, exclude)
    if not files:
        raise DatasetError(f"no documents with extensions {d.extensions} in {root}")
    progress(f"reading {len(files)} documents from {root} ({len(skipped)} other files skipped)")
    ds = ray.data.from_items(files, override_num_blocks=min(len(files), 4 * d.concurrency)).map(
        process_document, compute=ray.data.TaskPoolStrategy(size=d.concurrency), num_cpus=1,
        fn_kwargs={"tokenizer_file": str(tokenizer_file), "chunk_tokens": d.chunk_tokens,
                   "chunk_overlap": d.chunk_overlap, "min_chunk_tokens": d.min_chunk_tokens,
                   "extract_kinds": list(d.extract)})
    docs = sorted(ds.take_all(), key=lambda r: r["doc_path"])
    for doc in docs:  # Arrow hands nested lists back as arrays
        doc["chunks"], doc["extracted"] = list(doc["chunks"]), list(doc["extracted"])
    bad = [{"path": x["doc_path"], "reason": x["error"]} for x in docs if x["error"]]
    return docs, skipped + bad


def assign_topics(cfg: ExperimentConfig, docs: list[dict], chunks: pd.DataFrame, progress: Callable[[str], None]) -> str:
    """Fill ``chunks.topic``; returns how ("structure" or "cluster").

    auto takes the documents' own structure when it gives at least two topics and covers at least
    80% of the documents (a manual with a few sub-folders beside 200 top-level pages is not
    structured by topic); else it clusters.
    """
    d = cfg.data
    structure = {x["doc_id"]: x["topic"] for x in docs if not x["error"]}
    distinct = {t for t in structure.values() if t}
    covered = sum(bool(t) for t in structure.values()) / max(len(structure), 1)
    if d.topics_from == "structure" or (d.topics_from == "auto" and len(distinct) >= 2 and covered >= 0.8):
        chunks["topic"] = chunks["doc_id"].map(structure).replace("", "other")
        return "structure"
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    k = min(d.n_topics, len(chunks))
    tfidf = TfidfVectorizer(stop_words="english", max_features=20000, token_pattern=r"(?u)\b[a-zA-Z_]{3,}\b",
                            sublinear_tf=True)
    matrix = tfidf.fit_transform(chunks["text"])
    if d.topic_vectors == "minilm":
        progress(f"clustering {len(chunks)} chunks into {k} topics (all-MiniLM-L6-v2 + k-means)")
        vectors = embed(chunks["text"].tolist())
    else:
        # Latent semantic analysis: TF-IDF reduced to 100 dimensions and re-normalized. Seconds for
        # thousands of chunks where MiniLM took 150 s for 4,172 on 2 cores (benchmarks/README.md).
        from sklearn.decomposition import TruncatedSVD
        from sklearn.preprocessing import normalize

        progress(f"clustering {len(chunks)} chunks into {k} topics (TF-IDF + LSA + k-means)")
        dims = max(1, min(100, matrix.shape[1] - 1, len(chunks) - 1))
        vectors = normalize(TruncatedSVD(n_components=dims, random_state=cfg.seed).fit_transform(matrix)) \
            if matrix.shape[1] > 1 and len(chunks) > 2 else matrix.toarray()
    labels = KMeans(n_clusters=k, n_init=10, random_state=cfg.seed).fit_predict(vectors)
    vocab = np.array(tfidf.get_feature_names_out())
    names = {}
    for c in range(k):
        weights = np.asarray(matrix[labels == c].mean(axis=0)).ravel()
        names[c] = f"t{c}-" + "-".join(vocab[np.argsort(-weights)[:3]])
    chunks["topic"] = [names[c] for c in labels]
    return "cluster"


def sample_chunks(chunks: pd.DataFrame, limit: int | None, seed: int, min_tokens: int) -> pd.DataFrame:
    """Chunks of at least ``min_tokens``, dealt round-robin across topics in a seeded order (every
    topic gets some early), up to ``limit`` (None: all of them, in that order)."""
    pool = chunks[chunks["n_tokens"] >= min_tokens]
    rng = random.Random(seed)
    queues = {}
    for topic, group in sorted(pool.groupby("topic"), key=lambda kv: kv[0]):
        idx = list(group.index)
        rng.shuffle(idx)
        queues[topic] = idx
    picked: list[int] = []
    limit = len(pool) if limit is None else min(limit, len(pool))
    while len(picked) < limit:
        for topic in list(queues):
            if queues[topic] and len(picked) < limit:
                picked.append(queues[topic].pop())
        queues = {t: q for t, q in queues.items() if q}
    return pool.loc[picked]


class GenerationCache:
    """Model answers already received, by request key, appended as they arrive (JSON lines).

    A killed or failed build leaves them on disk; the next build with the same dataset name takes
    them instead of asking the model again. Failed requests are not kept (they are asked again).
    A torn last line (the process died mid-write) is skipped.
    """

    def __init__(self, path: Path):
        self.path = path
        self.known: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    item = json.loads(line)
                    self.known[item["key"]] = item["output"]
                except (ValueError, KeyError, TypeError):
                    continue
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def put(self, key: str, output: str) -> None:
        self.known[key] = output
        self._file.write(json.dumps({"key": key, "output": output}, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _ask(cfg: ExperimentConfig, requests: list[dict], cache: GenerationCache, model_path: Path, where: dict[str, Any],
         deadline: float | None) -> dict[str, tuple[str, str]]:
    """{key: (output, error)} for the requests: cached answers, then the model's through Ray Data.

    HTTP backends send nothing after ``deadline`` (epoch seconds) and cut the timeout of requests in
    flight to it; requests left unsent are left out of the result. (The in-process vLLM backend
    answers every request.)"""
    import ray

    g = cfg.data.generation
    results = {r["key"]: (cache.known[r["key"]], "") for r in requests if r["key"] in cache.known}
    todo = [r for r in requests if r["key"] not in results]
    if not todo:
        return results
    frame = pd.DataFrame([{"key": r["key"], "body": r["body"]} for r in todo]).drop_duplicates("key")
    # Many small blocks: Ray Data hands a block to one actor task, so a single block would be
    # answered by one actor however high the configured concurrency.
    n_blocks = max(1, min(len(frame), 8 * g.concurrency, len(frame) // g.batch_size))
    ds = ray.data.from_pandas([frame.iloc[i::n_blocks] for i in range(n_blocks)])
    if g.backend == "vllm":
        # The serving section's engine arguments: the same dtype and eager/compiled path the endpoint
        # serves, checked by its correctness gate.
        rows = vllm_processor(g, str(model_path), engine_args(cfg.serving), cfg.training.use_gpu)(ds)
    else:
        rows = ds.map_batches(ChatRequester, fn_constructor_kwargs={
            "url": where["base"].rstrip("/") + "/chat/completions", "api_key": where["key"], "timeout_s": g.timeout_s,
            "max_retries": g.max_retries, "retry_wait_s": g.retry_wait_s, "inflight": g.inflight, "deadline": deadline,
            "qps": g.qps},
            batch_size=g.batch_size, num_cpus=0.1, compute=ray.data.ActorPoolStrategy(size=g.concurrency))
    for r in rows.iter_rows():  # streamed: each answer is kept as soon as it arrives
        output, error = r.get("output") or "", r.get("error") or ""
        if error == ChatRequester.LATE:
            continue  # never sent: not a request, not a failure
        results[r["key"]] = (output, error)
        if not error:
            cache.put(r["key"], output)
    return results


def _rows_for(chunk: dict, requests: list[dict], results: dict[str, tuple[str, str]], origin: str, mode: str) -> list[dict]:
    rows = []
    for req in requests:
        if req["key"] not in results:
            continue
        output, error = results[req["key"]]
        if mode == "answer_first":
            rows.extend(question_rows({**chunk, "answer": req["answer"]}, output, error, origin))
        else:
            rows.extend(pairs_from_output(chunk, output, error, origin))
    return rows


def _accepted_unique(scored: pd.DataFrame) -> int:
    return scored.loc[scored["accepted"], "question"].map(normalize_text).nunique() if len(scored) else 0


def estimate_extracted(cfg: ExperimentConfig, extracted: list[dict], sample: int = 300) -> float:
    """Extracted pairs expected to pass the quality checks: the pass rate of a seeded sample, times the
    distinct questions (the whole set is scored after generation, on Ray Data)."""
    if not extracted:
        return 0.0
    rng = random.Random(cfg.seed)
    picked = extracted if len(extracted) <= sample else rng.sample(extracted, sample)
    scored = score_frame(pd.DataFrame(picked).assign(parse_error=""), cfg.data.quality)
    distinct = len({normalize_text(p["question"]) for p in extracted})
    return float(scored["accepted"].mean()) * distinct


def generate_pairs(cfg: ExperimentConfig, chunks: pd.DataFrame, model_path: Path, progress: Callable[[str], None],
                   expected_extracted: float = 0.0, deploy: Callable[[], None] | None = None
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scored LLM rows (accepted or with their reject reason) and facts about the run.

    Chunks are asked about in waves, round-robin across topics, until the accepted pairs expected
    (``expected_extracted`` + the model's accepted so far) reach ``target_pairs * target_margin`` and
    at least ``min_chunks`` chunks were asked about, or the chunks run out. After the first wave
    (``estimate_requests`` answers, or ``estimate_within_s`` seconds) the yield per request is known:
    when even every remaining chunk could not reach ``target_pairs``, the build fails there with the
    estimate and what to change, not after hours of generation. ``deploy`` (backend serve) is called
    before the first request: the Serve app is deployed only when the LLM is asked.
    """
    d, g = cfg.data, cfg.data.generation
    order = sample_chunks(chunks, g.max_chunks, cfg.seed, d.min_chunk_tokens)
    info: dict[str, Any] = {"mode": g.mode, "guided": g.guided, "requests": 0, "request_errors": 0, "cached": 0,
                            "chunks": 0, "waves": []}
    if order.empty:
        progress(f"  no chunk has data.min_chunk_tokens={d.min_chunk_tokens} tokens: nothing sent to the LLM")
        return pd.DataFrame(), info
    model = g.model or cfg.model.name
    origin = f"llm:{model}"
    need = math.ceil(d.target_pairs * g.target_margin)
    if expected_extracted >= need and g.min_chunks == 0:
        progress(f"  not asking the LLM: about {expected_extracted:.0f} extracted pairs are expected to pass, at least "
                 f"target_pairs x target_margin = {need} (set data.generation.min_chunks to ask it anyway)")
        info.update(skipped="extracted pairs reach the target", seconds=0.0)
        return pd.DataFrame(), info
    where: dict[str, Any] = {"base": None, "key": None}
    if g.backend == "vllm":
        info["endpoint"] = f"in-process vLLM ({model_path.name})"
    else:
        if deploy is not None:
            deploy()  # only now that the LLM is needed: no engine started for a build that does not ask it
        where["base"], where["key"] = endpoint(cfg)
        info["endpoint"] = f"{where['base']} model {model}"
    progress(f"asking the LLM for questions ({g.mode}{', guided' if g.guided else ''}) over up to {len(order)} chunks "
             f"({info['endpoint']}); extracted pairs expected to pass: {expected_extracted:.0f}, aiming at {need}")
    cache = GenerationCache(datasets_root(cfg) / "generation-cache.jsonl")
    records = order.to_dict("records")
    frames: list[pd.DataFrame] = []
    started = time.time()
    pos, done_requests, accepted, total_planned = 0, 0, 0, 0
    wave_requests = g.estimate_requests
    try:
        while pos < len(records):
            first = not info["waves"]
            batch: list[tuple[dict, list[dict]]] = []
            planned = 0
            while pos < len(records) and planned < wave_requests:
                chunk = records[pos]
                reqs = plan_requests(chunk, g, model)
                pos += 1
                if reqs:
                    batch.append((chunk, reqs))
                    planned += len(reqs)
            t = time.time()
            deadline = started + g.estimate_within_s if first else None
            total_planned += planned
            cached = sum(r["key"] in cache.known for _, reqs in batch for r in reqs)
            results = _ask(cfg, [r for _, reqs in batch for r in reqs], cache, model_path, where, deadline)
            rows = [row for chunk, reqs in batch for row in _rows_for(chunk, reqs, results, origin, g.mode)]
            asked = sum(r["key"] in results for _, reqs in batch for r in reqs)
            errors = sum(bool(results[r["key"]][1]) for _, reqs in batch for r in reqs if r["key"] in results)
            scored = score_frame(pd.DataFrame(rows), d.quality) if rows else pd.DataFrame()
            frames.append(scored)
            done_requests += asked
            info["requests"], info["request_errors"] = done_requests, info["request_errors"] + errors
            info["chunks"], info["cached"] = pos, info["cached"] + cached
            nonempty = [f for f in frames if len(f)]
            accepted = _accepted_unique(pd.concat(nonempty, ignore_index=True)) if nonempty else 0
            per_request = accepted / done_requests if done_requests else 0.0
            left_requests = (len(records) - pos) * total_planned / max(pos, 1)
            projected = expected_extracted + accepted + per_request * left_requests
            wave = {"requests": asked, "cached": cached, "errors": errors, "seconds": round(time.time() - t, 1),
                    "accepted_total": accepted, "yield_per_request": round(per_request, 4),
                    "projected_pairs": round(projected)}
            info["waves"].append(wave)
            elapsed = time.time() - started
            progress(f"  LLM wave {len(info['waves'])}: {asked} requests ({cached} answered from the cache, {errors} failed) in {wave['seconds']:.0f} s; "
                     f"{accepted} accepted so far of {done_requests} requests ({per_request:.0%} per request); "
                     f"{pos}/{len(records)} chunks asked about; estimate at the end of the corpus: {projected:.0f} pairs")
            if projected < d.target_pairs:
                raise DatasetError(
                    f"the corpus cannot reach data.target_pairs={d.target_pairs}: after {done_requests} requests "
                    f"({elapsed:.0f} s of generation) {per_request:.1%} of requests gave an accepted pair; with about "
                    f"{expected_extracted:.0f} extracted pairs expected to pass and {left_requests:.0f} requests left "
                    f"over {len(records) - pos} chunks, the estimate is {projected:.0f} pairs. To change it: lower "
                    f"data.target_pairs (e.g. to {max(1, int(projected * 0.9))}), ask more per chunk "
                    f"(data.generation.answers_per_chunk, now {g.answers_per_chunk}), raise or drop "
                    f"data.generation.max_chunks (now {g.max_chunks}), add documents, or use a more capable model "
                    "(data.generation.backend=http with data.generation.url and data.generation.mode=pairs). "
                    f"Answers so far are kept in {cache.path} and reused by the next build.")
            have = expected_extracted + accepted
            if have >= need and pos >= g.min_chunks:
                break
            missing = max(need - have, 0)
            wave_requests = max(32, math.ceil(missing / max(per_request, 0.01) * 1.1))
            if pos < g.min_chunks:
                wave_requests = max(wave_requests, math.ceil((g.min_chunks - pos) * total_planned / max(pos, 1)))
    finally:
        cache.close()
    seconds = time.time() - started
    info.update(seconds=round(seconds, 1), requests_per_s=round(done_requests / seconds, 3) if seconds else None)
    nonempty = [f for f in frames if len(f)]
    out = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame()
    progress(f"  {done_requests} requests in {seconds:.0f} s, {info['request_errors']} failed, {len(out)} candidate rows")
    return out, info


def endpoint(cfg: ExperimentConfig) -> tuple[str, str | None]:
    """(base URL ending in /v1, API key) of the generation endpoint; the Serve app is deployed if down."""
    g = cfg.data.generation

    if g.backend == "http":
        base, key = external_endpoint(g.url, g.api_key_env, "data.generation", DatasetError)
    else:
        base, key = base_url(cfg.serving) + "/v1", serving_key(cfg.serving)
    try:  # liveness only: which models it lists is not checked here
        httpx.get(base + "/models", headers=bearer(key), timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise DatasetError(f"generation endpoint {base} does not answer /models ({exc}); for the project's own "
                           "endpoint run `app serve up`, or set data.generation.enabled=false") from None
    return base, key


def score_pairs(cfg: ExperimentConfig, rows: list[dict]) -> pd.DataFrame:
    import ray

    df = pd.DataFrame(rows).drop_duplicates("pair_id", keep="first")  # one id, one pair (same doc, same question)
    for col, default in (("raw_output", ""), ("parse_error", ""), ("evidence_from", "extracted")):
        df[col] = df[col].fillna(default) if col in df else default
    n_blocks = max(1, min(len(df) // 256, 8 * cfg.data.concurrency))
    ds = ray.data.from_pandas([df.iloc[i::n_blocks] for i in range(n_blocks)])
    scored = ds.map_batches(QualityScorer, fn_constructor_kwargs={"quality": cfg.data.quality.model_dump()},
                            batch_format="pandas", batch_size=256, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=cfg.data.concurrency))
    out = scored.to_pandas().sort_values("pair_id", kind="stable").reset_index(drop=True)
    for col in ("q_embedding", "a_embedding"):
        out[col] = [np.asarray(v, dtype=np.float32) for v in out[col]]
    return out


def apply_reviews(cfg: ExperimentConfig, df: pd.DataFrame, decisions: list[dict],
                  doc_ids: set[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Reviewers' decisions override the generated pairs and the filter; reviewed pairs missing from
    this build are added back from the review database when their document is still in the corpus
    (else they are counted as orphaned and stay in the database, untouched)."""
    df = df.copy()
    df["review_status"], df["reviewer"] = "", ""
    counts: Counter[str] = Counter()
    index = {pid: i for i, pid in enumerate(df["pair_id"])}
    added = []
    for dec in decisions:
        i = index.get(dec["pair_id"])
        if i is None:
            if dec["status"] == "rejected":
                continue
            if dec.get("doc_id") not in doc_ids:
                counts["orphaned"] += 1
                continue
            row = {k: dec.get(k) or "" for k in PAIR_KEYS}
            row.update({s: np.nan for s in SCORES}, raw_output="", parse_error="", evidence_from="review")
            added.append({**row, "review_status": dec["status"], "reviewer": dec.get("reviewer") or "",
                          "accepted": True, "reject_reason": ""})
            counts["restored"] += 1
            continue
        df.at[i, "review_status"], df.at[i, "reviewer"] = dec["status"], dec.get("reviewer") or ""
        if dec["status"] == "rejected":
            df.at[i, "accepted"] = False
            df.at[i, "reject_reason"] = f"rejected by reviewer {dec.get('reviewer')}" + (f": {dec['note']}" if dec.get("note") else "")
        else:
            df.at[i, "question"], df.at[i, "answer"] = dec["question"], dec["answer"]
            df.at[i, "accepted"], df.at[i, "reject_reason"] = True, ""
        counts[dec["status"]] += 1
    if added:
        df = pd.concat([df, pd.DataFrame(added)], ignore_index=True)
    changed = df["review_status"].isin(["approved", "edited"])
    if changed.any():  # embeddings must match the reviewed text for dedup and the leakage check
        df.loc[changed, "q_embedding"] = pd.Series(list(embed(df.loc[changed, "question"].tolist())), index=df.index[changed])
        df.loc[changed, "a_embedding"] = pd.Series(list(embed(df.loc[changed, "answer"].tolist())), index=df.index[changed])
    return df, dict(counts)


def reason_kind(reason: str) -> str:
    first = reason.split(";")[0]
    return re.sub(r"\s*\(.*$|:.*$| of [0-9a-f]{16}.*$", "", first).strip() or "accepted"


def quality_stats(df: pd.DataFrame) -> dict[str, Any]:
    """Per generator: candidates, accepted, yield, score quantiles, top reject reasons."""
    stats: dict[str, Any] = {}
    for gen, group in df.groupby("generator"):
        entry: dict[str, Any] = {"candidates": int(len(group)), "accepted": int(group["accepted"].sum())}
        entry["yield"] = round(entry["accepted"] / entry["candidates"], 4) if entry["candidates"] else 0.0
        for s in SCORES:
            vals = group[s].dropna()
            if len(vals):
                entry[s] = {q: round(float(vals.quantile(p)), 4) for q, p in (("p10", .1), ("p50", .5), ("p90", .9))}
                entry[s]["mean"] = round(float(vals.mean()), 4)
        reasons = Counter(reason_kind(r) for r in group.loc[~group["accepted"], "reject_reason"])
        entry["reject_reasons"] = dict(reasons.most_common(12))
        stats[gen] = entry
    return stats


def _plot_scores(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.2))
    for ax, s in zip(axes, SCORES):
        for gen, group in df.groupby("generator"):
            vals = group[s].dropna()
            if len(vals):
                ax.hist(vals, bins=30, range=(1, 10) if "rank" in s else (-0.2 if "semantic" in s or "relevance" in s else 0, 1), alpha=0.5,
                        label=f"{gen} ({len(vals)})")
        ax.set_title(s.removeprefix("score_"))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the build ---------------------------------------------------------------------------------


class _AppRelease:
    """Removes the Serve app a build deployed for generation, once: after generation, or on failure."""

    def __init__(self, progress: Callable[[str], None]):
        self.deployed, self.progress = False, progress

    def __call__(self) -> None:
        if self.deployed:
            self.deployed = False
            self.progress("removing the Serve app this build deployed for generation")
            remove_app()


def build_dataset(cfg: ExperimentConfig, config_path: Path | None = None, *, rerun_of: str | None = None,
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    import mlflow
    import ray

    d = cfg.data
    home = cfg.paths.resolved_home()
    root = Path(d.docs_dir).expanduser().resolve() if d.docs_dir else ensure_default_corpus(home, progress)
    if not root.is_dir():
        raise DatasetError(f"data.docs_dir {root} does not exist or is not a folder")
    stored = model_store(cfg).resolve(cfg.model, progress=progress)
    if not (stored.path / "tokenizer.json").is_file():
        raise DatasetError(f"model {stored.name} at {stored.path} has no tokenizer.json (a fast tokenizer is needed "
                           "to count tokens for chunking)")
    store = ReviewStore(d.review_url(home))  # opened first: a bad URL fails before any work
    timings: dict[str, float] = {}
    t0 = time.time()
    tags = {"rerun_of": rerun_of} if rerun_of else {}
    with start_run(cfg, "build_dataset", config_path, inputs={"corpus": hash_path(root)}, tags=tags) as run, \
            contextlib.ExitStack() as cleanup:
        release = _AppRelease(progress)
        cleanup.callback(release)  # a failed build removes the app it deployed, as a successful one does

        def deploy() -> None:
            # Joins (or starts) the persistent cluster the Serve app lives on; the rest of the build
            # runs there, with this job's worker output forwarded again.
            release.deployed = ensure_served(cfg, [d.generation.model or cfg.model.name], "QA generation", progress)
            cluster.connect(cfg.ray)
            cluster.quiet_data_context()

        cluster.connect(cfg.ray)
        cluster.quiet_data_context()
        progress(f"Ray cluster: {ray.cluster_resources().get('CPU', 0):.0f} CPUs")

        t = time.time()
        docs, skipped = read_corpus(cfg, root, stored.path / "tokenizer.json", progress)
        chunks = pd.DataFrame([c for x in docs for c in x["chunks"]])
        if chunks.empty:
            raise DatasetError(f"no text in any of the {len(docs)} documents under {root}: {skipped[:5]}")
        timings["read_chunk_extract_s"] = time.time() - t
        t = time.time()
        how = assign_topics(cfg, docs, chunks, progress)
        topic_of = dict(zip(chunks["chunk_id"], chunks["topic"]))
        extracted = [{**p, "topic": topic_of[p["chunk_id"]]} for x in docs for p in x["extracted"]]
        timings["topics_s"] = time.time() - t
        progress(f"  {len(docs) - sum(bool(x['error']) for x in docs)} documents, {len(chunks)} chunks, "
                 f"{chunks['topic'].nunique()} topics ({how}), {len(extracted)} extracted pairs "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(Counter(p['generator'] for p in extracted).items()))}), "
                 f"{len(skipped)} files skipped; read {timings['read_chunk_extract_s']:.1f} s, topics {timings['topics_s']:.1f} s")
        for s in skipped[:20]:
            progress(f"  skipped {s['path']}: {s['reason']}")

        llm_scored, gen_info = pd.DataFrame(), {"requests": 0}
        if d.generation.enabled:
            t = time.time()
            expected = estimate_extracted(cfg, extracted)
            timings["estimate_extracted_s"] = time.time() - t
            t = time.time()
            llm_scored, gen_info = generate_pairs(cfg, chunks, stored.path, progress, expected,
                                                  deploy if d.generation.backend == "serve" else None)
            timings["generate_s"] = time.time() - t
            # Deployed only to write pairs: its engine's memory goes back to the next stage
            # (training needs it on a small machine). `app serve up` keeps an endpoint running.
            release()

        t = time.time()
        if not extracted and llm_scored.empty:
            raise DatasetError("no candidate pairs: enable extraction kinds or LLM generation")
        progress(f"scoring {len(extracted)} extracted pairs (all-MiniLM-L6-v2, {d.concurrency} actors)")

        parts = [score_pairs(cfg, extracted)] if extracted else []
        parts += [llm_scored] if len(llm_scored) else []
        scored = pd.concat(parts, ignore_index=True).drop_duplicates("pair_id", keep="first") \
            .sort_values("pair_id", kind="stable").reset_index(drop=True)
        timings["quality_s"] = time.time() - t
        scored, review_counts = apply_reviews(cfg, scored, store.decisions(d.name),
                                              {x["doc_id"] for x in docs if not x["error"]})
        scored = deduplicate(scored, d.quality)
        accepted = scored[scored["accepted"]].reset_index(drop=True)
        progress(f"  {len(accepted)} accepted of {len(scored)} ({timings['quality_s']:.1f} s); reviewer decisions "
                 f"applied: {review_counts or 'none'}")

        vq = np.stack(accepted["q_embedding"].to_numpy()) if len(accepted) else np.zeros((0, 384), np.float32)
        links = near_duplicate_links(accepted["pair_id"].tolist(), vq, d.quality.near_duplicate)
        records = accepted[list(OUTPUT_COLUMNS)].to_dict("records")
        assignment = assign_splits(records, d.splits.model_dump(), d.group_by, cfg.seed, links)
        splits = {s: [r for r in records if assignment[r["pair_id"]] == s] for s in SPLITS}
        leaks = check_leakage(splits, d.group_by, dict(zip(accepted["pair_id"], vq)), d.quality.near_duplicate)

        out_dir, manifest = write_dataset(cfg, root, splits, scored, chunks, docs, skipped, leaks,
                                          {"topics_from": how, "generation": gen_info, "reviews": review_counts,
                                           "timings_s": {k: round(v, 2) for k, v in timings.items()},
                                           "near_duplicate_links": len(links)})
        synced = store.sync([r for r in scored[list(PAIR_KEYS) + ["accepted", "reject_reason"]].to_dict("records")
                             if r["question"] and r["answer"]], dataset=d.name, build=manifest["version"])
        manifest["review_sync"] = synced
        write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))
        progress(f"  dataset written to {out_dir}; logging it to MLflow")

        wall = time.time() - t0
        metrics = {"pairs_total": len(accepted), "chunks": len(chunks), "documents": len(docs), "files_skipped": len(skipped),
                   "leaks": len(leaks), "chunks_per_s": len(chunks) / max(timings["read_chunk_extract_s"], 1e-9),
                   "build_seconds": wall, **{f"pairs_{s}": len(v) for s, v in splits.items()}}
        for gen, st in manifest["quality"].items():
            metrics.update({f"yield_{gen}": st["yield"], f"accepted_{gen}": st["accepted"], f"candidates_{gen}": st["candidates"]})
            metrics.update({f"{score}_p50_{gen}": st[score]["p50"] for score in SCORES if score in st})
        log_step_metrics(metrics, step=0)
        mlflow.log_artifacts(str(out_dir), artifact_path="dataset")
        for split, rows in splits.items():
            frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
            mlflow.log_input(mlflow.data.from_pandas(frame, source=str(out_dir / f"{split}.parquet"),
                                                     name=f"{d.name}-{split}", targets="answer",
                                                     digest=manifest["content_hash"][:8]), context=split)
        mlflow.set_tags({"dataset.name": d.name, "dataset.version": manifest["version"], "dataset.path": str(out_dir)})
        summary = {"run_id": run.info.run_id, "path": str(out_dir), "version": manifest["version"],
                   "pairs": {s: len(v) for s, v in splits.items()}, "leaks": len(leaks),
                   "yield": {g: st["yield"] for g, st in manifest["quality"].items()}, "seconds": round(wall, 1)}
        # Raised inside the run, so MLflow marks it FAILED; the written files stay for inspection.
        if leaks:
            raise LeakageError(f"{leakage_message(leaks)}\n(report: {out_dir / 'leakage.json'})")
        if len(accepted) < d.target_pairs or len(splits["test"]) < d.min_test_pairs:
            raise DatasetError(f"the build kept {len(accepted)} pairs ({len(splits['test'])} in test), below "
                               f"data.target_pairs={d.target_pairs} / data.min_test_pairs={d.min_test_pairs}; "
                               f"see {out_dir / 'manifest.json'} for the reject reasons per generator")
    publish_latest(cfg, manifest["version"])
    progress(f"dataset {d.name} {manifest['version']}: " + ", ".join(f"{s} {len(v)}" for s, v in splits.items())
             + f"; written to {out_dir}")
    return summary


def write_dataset(cfg: ExperimentConfig, root: Path, splits: dict[str, list[dict]], scored: pd.DataFrame,
                  chunks: pd.DataFrame, docs: list[dict], skipped: list[dict], leaks: list[dict],
                  extra: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Parquet + JSONL per split, the rejected pairs, the chunk index and the manifest.

    Written into a hidden folder renamed to the version at the end: a build killed meanwhile never
    leaves a folder that looks like a complete version (:mod:`app.datasets`)."""
    canonical = json.dumps({s: [{k: r[k] for k in ("pair_id", "question", "answer", "context")} for r in v]
                            for s, v in splits.items()}, sort_keys=True, ensure_ascii=False)
    content_hash = hashlib.sha256(canonical.encode()).hexdigest()
    version = f"{time.strftime('%Y%m%d-%H%M%S')}-{content_hash[:8]}"
    final = datasets_root(cfg) / version
    if final.exists():
        raise DatasetError(f"{final} already exists (two builds of the same pairs in the same second?); run it again")
    remove_stale_partials(cfg)
    out = partial_folder(cfg, version)
    out.mkdir(parents=True, exist_ok=False)
    for split, rows in splits.items():
        frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
        frame.to_parquet(out / f"{split}.parquet", index=False)
        frame.to_json(out / f"{split}.jsonl", orient="records", lines=True, force_ascii=False)
    rejected = scored[~scored["accepted"]].drop(columns=["q_embedding", "a_embedding"])
    rejected.to_json(out / "rejected.jsonl", orient="records", lines=True, force_ascii=False)
    chunks.to_parquet(out / "chunks.parquet", index=False)
    (out / "leakage.json").write_text(json.dumps(leaks, indent=2))
    _plot_scores(scored, out / "quality_scores.png")
    per_topic: dict[str, dict[str, int]] = defaultdict(dict)
    per_gen: dict[str, dict[str, int]] = defaultdict(dict)
    for split, rows in splits.items():
        for key, table in (("topic", per_topic), ("generator", per_gen)):
            for value, n in Counter(r[key] for r in rows).items():
                table[value][split] = n
    manifest = {
        "name": cfg.data.name, "version": version, "content_hash": content_hash, "config_hash": cfg.content_hash(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "corpus": str(root),
        "documents": {"read": sum(not x["error"] for x in docs), "chunks": len(chunks), "skipped": skipped},
        "counts": {"splits": {s: len(v) for s, v in splits.items()}, "total": sum(len(v) for v in splits.values()),
                   "per_topic": per_topic, "per_generator": per_gen},
        "quality": quality_stats(scored), "leakage": {"overlaps": len(leaks), "group_by": cfg.data.group_by},
        "files": sorted(p.name for p in out.iterdir()), **extra,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    out.rename(final)
    return final, manifest
