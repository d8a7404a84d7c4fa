"""Does fine-tuning help on the questions people ask? Base vs fine-tuned on human-written FAQs.

    .venv/bin/python benchmarks/human_faq.py --out ~/corpora/debian-faq            # everything
    .venv/bin/python benchmarks/human_faq.py --out ~/corpora/debian-faq --skip dataset,train  # evaluate again
    .venv/bin/python benchmarks/human_faq.py --out ~/corpora/debian-faq --set training.max_steps=120

1. `scripts/debian_faq.py OUT`: five Debian documentation packages (git-doc, sqlite3-doc,
   libcurl4-doc, zsh-doc, apache2-doc); each one's FAQ is held out of its manual and its entries,
   written by the projects' people, become OUT/questions.jsonl (238 questions for the bookworm
   versions in OUT/SOURCES.json).
2. `jobs/build_dataset.py` on OUT/corpus (the manuals without their FAQs), as configured.
3. `jobs/finetune.py` on that dataset, as configured.
4. `jobs/evaluate.py` once, on the FAQ questions (context retrieved from OUT/corpus by BM25,
   evaluation.retrieval) together with --split-examples questions of the dataset's own test split
   (evaluation.with_test_split; `--skip split` leaves them out), at most --max-new-tokens new tokens
   (the FAQ's answers are paragraphs: median 112 words). One report, with per-origin paired tests.

It prints base vs fine-tuned on the human-written questions on every headline metric with the
paired difference, its interval, the permutation p-value, n and the smallest difference the test
detects 80% of the time; then per origin and per package. Every stage is its own MLflow run.
`--set` passes settings to every stage (the same as the jobs' own --set).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADLINE = ["semantic_similarity", "token_f1", "domain_correct", "reference_coverage", "rougeL", "bleu"]


def job(script: str, config: str, sets: list[str]) -> float:
    cmd = [sys.executable, str(ROOT / "jobs" / script), "--config", config]
    for s in sets:
        cmd += ["--set", s]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.time() - started


def show(summary: dict, title: str) -> None:
    from app.eval.report import LABELS

    base, tuned = summary["models"][0], summary["models"][1]
    c = summary["comparisons"][tuned]
    print(f"\n{title}: n={summary['examples']}, {base} (base) vs {tuned} (fine-tuned)")
    print(f"  {'metric':42} {'base':>7} {'tuned':>7} {'diff':>7} {'95% CI':>18} {'rel':>7} {'p':>7} {'detect':>7}")
    for k in HEADLINE:
        x = c[k]
        rel = (x["mean_b"] - x["mean_a"]) / x["mean_a"] if x["mean_a"] else float("nan")
        print(f"  {LABELS[k]:42} {x['mean_a']:7.3f} {x['mean_b']:7.3f} {x['difference']:+7.3f} "
              f"[{x['low']:+.3f}, {x['high']:+.3f}] {rel:+7.1%} {x['p_permutation']:7.4f} {x.get('detectable', 0):7.3f}")
    words = summary.get("answer_words", {})
    if words:
        print(f"  mean answer words: base {words.get(base, 0):.0f}, fine-tuned {words.get(tuned, 0):.0f}")
    for by in ("origin", "topic"):
        for r in summary["breakdown"][by]:
            b, t = r[base], r[tuned]
            print(f"  {by} {r[by]:>16} n={r['n']:4d}: similarity {b.get('semantic_similarity', 0):.3f} -> "
                  f"{t.get('semantic_similarity', 0):.3f}, token F1 {b['token_f1']:.3f} -> {t['token_f1']:.3f}, "
                  f"domain accuracy {b['domain_accuracy']:.3f} -> {t['domain_accuracy']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the FAQ test set's folder (built when missing)")
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--name", default="debian-qa", help="data.name of the dataset")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"), help="suffix of the evaluation run names")
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--split-examples", type=int, default=120, help="test-split examples evaluated beside the FAQ")
    ap.add_argument("--skip", default="", help="comma-separated stages not to run: dataset, train, split")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    ap.add_argument("--debs", type=Path, help="passed to scripts/debian_faq.py")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = args.out.expanduser().resolve()
    if not (out / "questions.jsonl").is_file():
        cmd = [sys.executable, str(ROOT / "scripts/debian_faq.py"), str(out)] + (["--debs", str(args.debs)] if args.debs else [])
        subprocess.run(cmd, check=True)
    sources = json.loads((out / "SOURCES.json").read_text())
    for p in sources["packages"]:
        print(f"{p['package']} {p['version']} (sha256 {p['deb_sha256'][:12]}): {p['questions']} questions, "
              f"{p['answer_sentences_in_corpus']}/{p['answer_sentences']} answer sentences in the corpus")
    common = [f"data.docs_dir={out / 'corpus'}", f"data.name={args.name}", *args.sets]
    seconds = {}
    if "dataset" not in skip:
        seconds["dataset"] = job("build_dataset.py", args.config, common)
    if "train" not in skip:
        seconds["train"] = job("finetune.py", args.config, common)
    seconds["evaluate"] = job("evaluate.py", args.config, [
        *common, f"evaluation.test_set={out / 'questions.jsonl'}", f"evaluation.retrieval.corpus_dir={out / 'corpus'}",
        f"evaluation.with_test_split={0 if 'split' in skip else args.split_examples}",
        f"evaluation.max_new_tokens={args.max_new_tokens}",
        f"evaluation.run_name=faq-{args.tag}"])
    from app.config import load_config

    cfg = load_config(ROOT / args.config, common)
    summary = json.loads((cfg.paths.resolved_home() / "eval" / f"faq-{args.tag}" / "summary.json").read_text())
    show(summary, f"All questions ({summary['examples']})")
    tuned = summary["models"][1]
    for origin, per in summary.get("comparisons_by_origin", {}).items():
        print(f"\n{origin}: " + "; ".join(
            f"{k} {c['mean_a']:.3f} -> {c['mean_b']:.3f} ({(c['mean_b'] - c['mean_a']) / c['mean_a']:+.1%}), "
            f"diff {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], p={c['p_permutation']:.4f}, "
            f"n={c['n']}, detectable {c['detectable']:.3f}" for k, c in per[tuned].items() if c["mean_a"]))
    print("\nseconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
