import json

import pandas as pd
import pytest

from app.eval.config import RetrievalConfig
from app.eval.testset import EvalDataError, Retriever, dataset_split, read_jsonl, sample

CHUNKS = [
    {"text": "json.dumps(obj) serializes obj to a JSON formatted str using this conversion table."},
    {"text": "The csv module implements classes to read and write tabular data in CSV format."},
    {"text": "threading.enumerate() returns a list of all Thread objects currently active."},
    {"text": "pathlib offers classes representing filesystem paths with semantics for different OSes."},
]


def write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_examples_and_defaults(tmp_path):
    f = write(tmp_path / "q.jsonl", [
        {"question": "What does json.dumps return?", "answer": "A JSON formatted str.", "topic": "json"},
        {"id": "t2", "question": "What reads CSV files?", "reference": "The csv module.", "context": "csv docs"},
        "",
    ])
    df = read_jsonl(f)
    assert list(df["example_id"])[1] == "t2" and len(df["example_id"][0]) == 16
    assert list(df["reference"]) == ["A JSON formatted str.", "The csv module."]
    assert list(df["topic"]) == ["json", "unlabelled"] and list(df["origin"]) == ["human-written"] * 2
    assert list(df["context_source"]) == ["", "given"]


def test_jsonl_problems_are_named_by_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", ['{"question": "ok?", "answer": "yes"}', "{not json", '["a list"]',
                                      '{"answer": "no question"}', '{"question": "no answer?"}',
                                      '{"question": "q?", "answer": "a", "context": 5}'])
    with pytest.raises(EvalDataError) as err:
        read_jsonl(f)
    msg = str(err.value)
    assert "5 bad line(s)" in msg and "line 2: not JSON" in msg and "line 3: expected an object" in msg
    assert "line 4: no question" in msg and "line 5: no answer" in msg and "line 6: context must be a string" in msg
    with pytest.raises(EvalDataError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(EvalDataError, match="holds no examples"):
        read_jsonl(write(tmp_path / "empty.jsonl", [""]))
    dup = write(tmp_path / "dup.jsonl", [{"id": "a", "question": "q?", "answer": "x"}, {"id": "a", "question": "r?", "answer": "y"}])
    with pytest.raises(EvalDataError, match="ids used twice: \\['a'\\]"):
        read_jsonl(dup)


def test_dataset_split_columns_and_stratified_sample(tmp_path):
    rows = [{"pair_id": f"p{i}", "question": f"q{i}?", "answer": f"a{i}", "context": "c", "topic": f"t{i % 3}",
             "generator": "llm:smollm2" if i % 2 else "extract:signature"} for i in range(12)]
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    df = dataset_split(tmp_path)
    assert set(df["origin"]) == {"LLM-written", "extracted"} and set(df["context_source"]) == {"dataset"}
    from app.datasets import origin_of

    assert [origin_of(o) for o in ("extracted:definition", "statement", "llm:smollm2", "llm_question", "human",
                                   "reviewer-x")] == ["extracted", "extracted", "LLM-written", "LLM-written",
                                                      "human-written", "reviewer-x"]
    picked = sample(df, 6, seed=0)
    assert len(picked) == 6 and picked["topic"].value_counts().tolist() == [2, 2, 2]
    assert picked.equals(sample(df, 6, seed=0))
    with pytest.raises(EvalDataError, match="has no validation split"):
        dataset_split(tmp_path, "validation")


@pytest.mark.parametrize("method", ["bm25", "embedding"])
def test_retrieval_finds_the_passage(method):
    r = Retriever(CHUNKS, RetrievalConfig(method=method, top_k=2))
    hits = r.search(["How do I serialize an object to JSON?", "Which function lists active threads?"])
    assert [h[0][0] for h in hits] == [0, 2] and all(len(h) == 2 for h in hits)
    assert hits[0][0][1] >= hits[0][1][1]
    contexts = r.contexts(["read and write CSV tabular data"])
    assert contexts[0].startswith(CHUNKS[1]["text"])
    with pytest.raises(EvalDataError, match="no text to index"):
        Retriever([], RetrievalConfig())


def test_a_test_set_with_the_test_split_in_one_run(tmp_path, monkeypatch):
    from app.config import ExperimentConfig
    from app.eval.run import load_test_set

    monkeypatch.setenv("DOMAIN_LLM_HOME", str(tmp_path / "home"))
    cfg = ExperimentConfig.model_validate({"data": {"name": "ds"}, "evaluation": {
        "test_set": str(write(tmp_path / "h.jsonl", [{"question": f"Why {i}?", "answer": f"Because {i}.", "topic": "faq"}
                                                      for i in range(5)])), "with_test_split": 4}})
    version = tmp_path / "home/datasets/ds/v1"
    version.mkdir(parents=True)
    (version.parent / "LATEST").write_text("v1")
    pd.DataFrame([{"pair_id": f"p{i}", "question": f"q{i}?", "answer": f"a{i}", "context": "c", "topic": f"t{i % 2}",
                   "generator": "definition", "origin": "extracted:definition"} for i in range(10)]
                 ).to_parquet(version / "test.parquet")
    frame, name = load_test_set(cfg, lambda _: None)
    assert frame["origin"].value_counts().to_dict() == {"human-written": 5, "extracted": 4}
    assert "h.jsonl + test split of v1 (4 examples)" in name
    alone, _ = load_test_set(cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(
        update={"with_test_split": 0})}), lambda _: None)
    assert set(alone["origin"]) == {"human-written"} and len(alone) == 5


def test_validation_and_test_splits_evaluated_together(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from app.config import ExperimentConfig
    from app.eval.run import load_test_set

    monkeypatch.setenv("DOMAIN_LLM_HOME", str(tmp_path / "home"))
    version = tmp_path / "home/datasets/ds/v1"
    version.mkdir(parents=True)
    (version.parent / "LATEST").write_text("v1")
    for split, n in (("test", 6), ("validation", 4)):
        pd.DataFrame([{"pair_id": f"{split}{i}", "question": f"q{i}?", "answer": f"a{i}", "context": "c",
                       "topic": f"t{i % 2}", "generator": "definition", "origin": "extracted:definition"}
                      for i in range(n)]).to_parquet(version / f"{split}.parquet")
    cfg = ExperimentConfig.model_validate({"data": {"name": "ds"}})
    frame, name = load_test_set(cfg, lambda _: None)
    assert len(frame) == 6 and name == "test split of v1"
    both = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"splits": ["validation", "test"]})})
    frame, name = load_test_set(both, lambda _: None)
    assert len(frame) == 10 and frame["example_id"].is_unique and name == "validation + test splits of v1"
    (version / "validation.parquet").unlink()
    with pytest.raises(Exception, match="has no validation split"):
        load_test_set(both, lambda _: None)
    for bad, message in (([], "at least one split"), (["test", "test"], "listed twice"), (["train"], "splits")):
        with pytest.raises(ValidationError, match=message):
            ExperimentConfig.model_validate({"evaluation": {"splits": bad}})


def test_retrieval_scoped_by_topic_searches_the_topics_folder(monkeypatch):
    from app import config
    from app.eval import testset
    from app.eval.config import RetrievalConfig

    chunks = [{"doc_path": "curl/FAQ-like.md", "text": "curl stops a transfer when a callback returns an error."},
              {"doc_path": "apache/proxy.md", "text": "mod_proxy stops a transfer when the backend times out."},
              {"doc_path": "top.md", "text": "Nothing about transfers here at all."}]
    monkeypatch.setattr(testset, "corpus_chunks", lambda *a: chunks)
    frame = pd.DataFrame({"example_id": ["a", "b"], "question": ["How does mod_proxy stop a transfer?"] * 2,
                          "reference": ["r", "r"], "context": ["", ""], "topic": ["curl", "other"],
                          "origin": ["human-written"] * 2, "context_source": ["", ""]})
    cfg = config.ExperimentConfig.model_validate({"evaluation": {"retrieval": {"top_k": 1, "scope": "topic"}}})
    got, facts = testset.fill_contexts(frame, cfg, None, lambda _: None)
    assert got["context"].tolist() == [chunks[0]["text"], chunks[1]["text"]]  # curl's folder only; the rest: all
    assert facts["scope"] == "topic" and set(got["context_source"]) == {"retrieved:bm25:topic"}
    whole, _ = testset.fill_contexts(frame, cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={
        "retrieval": RetrievalConfig(top_k=1)})}), None, lambda _: None)
    assert whole["context"].tolist() == [chunks[1]["text"]] * 2
