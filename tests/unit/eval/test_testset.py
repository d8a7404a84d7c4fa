import json

import pandas as pd
import pytest

from app.config import RetrievalConfig
from app.eval.testset import Retriever, EvalDataError, dataset_split, read_jsonl, sample

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
    from app.eval.testset import origin_of

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
