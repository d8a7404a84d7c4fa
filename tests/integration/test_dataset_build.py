"""`app dataset build` for real: Ray Data over a small folder with bad files, quality checks,
grouped splits, MLflow logging, and reviewers' corrections surviving a rebuild.

LLM generation is off here (it needs a served model: see test_serving.py); extraction gives the pairs.
"""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from app.data.review import ReviewStore
from tests.conftest import build_dataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docs(qa_docs) -> Path:
    return qa_docs


@pytest.fixture(scope="module")
def first(qa_build):
    return qa_build


def build(docs, tmp_path_factory, name, review_db, extra=()):
    return build_dataset(docs, name, review_db, extra)


def load(path: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(path / f"{s}.parquet") for s in ("train", "validation", "test")}


def test_build_reads_good_documents_and_reports_bad_ones(first):
    path = Path(first["summary"]["path"])
    manifest = json.loads((path / "manifest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in manifest["documents"]["skipped"]}
    assert skipped["bad/empty.md"] == "empty file"
    assert "binary" in skipped["bad/binary.md"]
    assert "not valid UTF-8" in skipped["bad/latin1.txt"]
    assert "unsupported file type" in skipped["bad/image.png"]
    assert manifest["documents"]["read"] == 8 + 5 + 2 + 1  # modules, language topics, team docs, the export README
    assert manifest["leakage"]["overlaps"] == 0 and first["summary"]["leaks"] == 0
    splits = load(path)
    assert all(len(df) for df in splits.values())
    # Grouped by document: no document (hence no chunk) in two splits.
    docs_in = {s: set(df["doc_id"]) for s, df in splits.items()}
    assert not (docs_in["train"] & docs_in["test"]) and not (docs_in["train"] & docs_in["validation"])
    assert not (docs_in["validation"] & docs_in["test"])
    allp = pd.concat(splits.values())
    assert set(allp["generator"]) >= {"definition", "faq", "heading_question"}
    assert allp["question"].str.endswith("?").all()
    faq = allp[allp["generator"] == "faq"].iloc[0]
    assert "thirty minutes" in faq["answer"] and faq["answer"] in faq["context"].replace("\n", " ") or "thirty" in faq["context"]
    for s, df in splits.items():
        assert sum(1 for _ in open(path / f"{s}.jsonl")) == len(df)
    assert manifest["quality"]["definition"]["candidates"] >= manifest["quality"]["definition"]["accepted"] > 0
    assert manifest["counts"]["total"] == len(allp)


def test_build_is_tracked_in_mlflow(first):
    run = mlflow.MlflowClient().get_run(first["summary"]["run_id"])
    assert run.data.tags["app.stage"] == "build_dataset"
    assert run.data.metrics["leaks"] == 0 and run.data.metrics["yield_definition"] > 0
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags}
    assert contexts == {"train", "validation", "test"}
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "dataset")}
    assert {"dataset/manifest.json", "dataset/train.jsonl", "dataset/rejected.jsonl"} <= names


def test_review_corrections_survive_a_rebuild(first, docs, tmp_path_factory):
    store = ReviewStore(first["db"])
    test_pairs = pd.concat(load(Path(first["summary"]["path"])).values()).sort_values("pair_id")
    edited, rejected = test_pairs.iloc[0]["pair_id"], test_pairs.iloc[1]["pair_id"]
    filtered = [i for i in store.items(limit=1000) if not i["auto_accepted"]]
    assert filtered, "the quality filter rejected nothing: the rescue case cannot be tested"
    rescued = filtered[0]["pair_id"]
    new_answer = "Corrected by a reviewer: " + test_pairs.iloc[0]["answer"]
    store.review(edited, "bob", "edit", answer=new_answer)
    store.review(rejected, "bob", "reject", note="ambiguous")
    store.review(rescued, "carol", "approve")
    events_before = sum(len(store.history(p)) for p in (edited, rejected, rescued))

    summary, proc = build(docs, tmp_path_factory, "it-build", first["db"])
    assert "reviewer decisions applied" in proc.stdout
    allp = pd.concat(load(Path(summary["path"])).values()).set_index("pair_id")
    assert allp.loc[edited, "answer"] == new_answer and allp.loc[edited, "review_status"] == "edited"
    assert allp.loc[edited, "reviewer"] == "bob"
    assert rejected not in allp.index
    assert rescued in allp.index and allp.loc[rescued, "review_status"] == "approved"
    # The database still holds every decision and event after the rebuild.
    store = ReviewStore(first["db"])
    assert store.get(edited)["answer"] == new_answer and store.get(edited)["status"] == "edited"
    assert store.get(rejected)["status"] == "rejected"
    assert sum(len(store.history(p)) for p in (edited, rejected, rescued)) == events_before
