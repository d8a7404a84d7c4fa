"""The review store on a real SQLite file: sync, reviews, rebuilds, decisions, offline export/import."""

from __future__ import annotations

import json

import pytest

from app.data.review import ReviewError, ReviewStore, UnknownPairError
from app.datasets import pair_id


def make_pair(i: int, *, answer: str | None = None, accepted: bool = True, topic: str = "io",
              generator: str = "llm") -> dict:
    question = f"What does function number {i} do?"
    context = f"Function number {i} reads the file and returns its lines. It never writes."
    return {
        "pair_id": pair_id(generator, f"doc{i % 2}#c{i}", question), "question": question,
        "answer": answer or f"It reads the file and returns its lines ({i}).",
        "evidence": "reads the file and returns its lines", "generator": generator, "origin": "test-model",
        "doc_id": f"doc{i % 2}", "doc_path": f"docs/doc{i % 2}.md", "doc_title": f"Document {i % 2}",
        "section": "Reading > Files", "chunk_id": f"doc{i % 2}#c{i}", "context": context, "topic": topic,
        "accepted": accepted, "reject_reason": "" if accepted else "answer_not_supported",
        "score_support": 0.7,
    }


@pytest.fixture
def store(tmp_path) -> ReviewStore:
    s = ReviewStore(f"sqlite:///{tmp_path / 'nested' / 'review.db'}")
    yield s
    s.close()


@pytest.fixture
def pairs() -> list[dict]:
    return [make_pair(i) for i in range(4)]


def test_sync_inserts_pending(store, pairs, tmp_path):
    assert (tmp_path / "nested" / "review.db").exists()
    assert store.sync(pairs, "ds", "b1") == {"new": 4, "refreshed": 0, "kept_reviewed": 0}
    item = store.get(pairs[0]["pair_id"])
    assert item["status"] == "pending" and item["reviewer"] is None
    assert item["question"] == item["orig_question"] == pairs[0]["question"]
    assert item["context"] == pairs[0]["context"] and item["doc_title"] == "Document 0"
    assert item["first_seen_build"] == item["last_seen_build"] == "b1" and item["auto_accepted"] is True
    assert store.stats()["by_status"] == {"pending": 4, "approved": 0, "edited": 0, "rejected": 0}
    assert store.stats()["by_generator"]["llm"]["pending"] == 4
    assert store.history(pairs[0]["pair_id"]) == []
    # A second sync of the same build refreshes pending items and adds nothing.
    assert store.sync(pairs, "ds", "b2") == {"new": 0, "refreshed": 4, "kept_reviewed": 0}
    assert store.get(pairs[0]["pair_id"])["first_seen_build"] == "b1"


def test_tables_survive_reopening(tmp_path, pairs):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ReviewStore(url).sync(pairs, "ds", "b1")
    assert len(ReviewStore(url).items(limit=10)) == 4


def test_review_actions_write_events(store, pairs):
    store.sync(pairs, "ds", "b1")
    p0, p1, p2 = (p["pair_id"] for p in pairs[:3])

    approved = store.review(p0, "alice", "approve")
    assert approved["status"] == "approved" and approved["reviewer"] == "alice"
    assert approved["question"] == pairs[0]["question"] and approved["reviewed_at"]

    edited = store.review(p1, " bob ", "edit", answer="  It returns the file's lines as a list.  ")
    assert edited["status"] == "edited" and edited["answer"] == "It returns the file's lines as a list."
    assert edited["orig_answer"] == pairs[1]["answer"] and edited["reviewer"] == "bob"

    rejected = store.review(p2, "alice", "reject", note="not supported by the passage")
    assert rejected["status"] == "rejected" and rejected["note"] == "not supported by the passage"

    [ev] = store.history(p1)
    assert (ev["action"], ev["reviewer"], ev["status_before"], ev["status_after"]) == ("edit", "bob", "pending",
                                                                                        "edited")
    assert ev["answer_before"] == pairs[1]["answer"] and ev["answer_after"] == edited["answer"]
    assert store.history(p2)[0]["note"] == "not supported by the passage"

    # Approving an edited item keeps its edited text; reopening keeps the history.
    assert store.review(p1, "carol", "approve")["answer"] == edited["answer"]
    reopened = store.review(p1, "carol", "reopen")
    assert reopened["status"] == "pending" and reopened["answer"] == edited["answer"]
    assert [e["action"] for e in store.history(p1)] == ["edit", "approve", "reopen"]
    assert store.stats()["events"] == 5
    assert [i["pair_id"] for i in store.items(status="rejected")] == [p2]


def test_bad_review_input(store, pairs):
    store.sync(pairs, "ds", "b1")
    pid = pairs[0]["pair_id"]
    for reviewer in ("", "   ", None):
        with pytest.raises(ReviewError, match="reviewer"):
            store.review(pid, reviewer, "approve")
    with pytest.raises(UnknownPairError, match="unknown pair id 'nope'"):
        store.review("nope", "alice", "approve")
    with pytest.raises(ReviewError, match="unknown action 'bless'"):
        store.review(pid, "alice", "bless")
    with pytest.raises(ReviewError, match="edited answer is empty"):
        store.review(pid, "alice", "edit", answer="  ")
    with pytest.raises(ReviewError, match="edited question is empty"):
        store.review(pid, "alice", "edit", question="")
    with pytest.raises(ReviewError, match="changes neither"):
        store.review(pid, "alice", "edit", answer=pairs[0]["answer"])
    with pytest.raises(ReviewError, match="save it as an edit"):
        store.review(pid, "alice", "approve", answer="something else")
    with pytest.raises(ReviewError, match="already pending"):
        store.review(pid, "alice", "reopen")
    with pytest.raises(ReviewError, match="unknown status"):
        store.items(status="done")
    assert store.history(pid) == [] and store.get(pid)["status"] == "pending"


def test_rebuild_keeps_reviewer_work(store, pairs):
    store.sync(pairs, "ds", "b1")
    p0, p1, p2, p3 = (p["pair_id"] for p in pairs)
    store.review(p0, "alice", "approve")
    store.review(p1, "alice", "edit", answer="Edited by a human.")
    store.review(p2, "alice", "reject", note="wrong")

    # The rebuild regenerated every answer differently and the filter now rejects them all.
    rebuilt = [make_pair(i, answer=f"Regenerated answer {i}.", accepted=False) for i in range(4)]
    assert store.sync(rebuilt, "ds", "b2") == {"new": 0, "refreshed": 1, "kept_reviewed": 3}

    a0, a1, a2, a3 = (store.get(p) for p in (p0, p1, p2, p3))
    assert (a0["status"], a0["answer"]) == ("approved", pairs[0]["answer"])
    assert (a1["status"], a1["answer"], a1["reviewer"]) == ("edited", "Edited by a human.", "alice")
    assert (a2["status"], a2["answer"], a2["note"]) == ("rejected", pairs[2]["answer"], "wrong")
    assert all(a["last_seen_build"] == "b2" for a in (a0, a1, a2, a3))
    assert a0["auto_accepted"] is True  # reviewed items keep everything but last_seen_build
    # The pending one follows the new build.
    assert (a3["status"], a3["answer"], a3["orig_answer"], a3["auto_accepted"]) == (
        "pending", "Regenerated answer 3.", "Regenerated answer 3.", False)

    # A reopened item keeps the reviewer's text through a rebuild, only the generated fields move on.
    store.review(p1, "bob", "reopen")
    store.sync([make_pair(1, answer="Third generation.")], "ds", "b3")
    again = store.get(p1)
    assert (again["status"], again["answer"], again["orig_answer"]) == ("pending", "Edited by a human.",
                                                                        "Third generation.")
    assert len(store.history(p1)) == 2


def test_next_pending_puts_auto_rejected_last(store):
    pairs = [make_pair(0, accepted=False), make_pair(1), make_pair(2, accepted=False), make_pair(3)]
    store.sync(pairs, "ds", "b1")
    first = store.next_pending()
    assert first["auto_accepted"] is True
    order, after = [], None
    for _ in range(4):
        item = store.next_pending(after=after)
        order.append(item)
        after = item["pair_id"]
    assert [i["auto_accepted"] for i in order] == [True, True, False, False]
    assert len({i["pair_id"] for i in order}) == 4
    assert store.next_pending(after=order[-1]["pair_id"])["pair_id"] == order[0]["pair_id"]  # wraps around
    assert store.next_pending(topic="nothing") is None
    for item in order:
        store.review(item["pair_id"], "alice", "approve")
    assert store.next_pending() is None


def test_decisions(store, pairs):
    store.sync(pairs, "ds", "b1")
    store.sync([make_pair(9, topic="net")], "other", "b1")
    p0, p1, p2 = (p["pair_id"] for p in pairs[:3])
    store.review(p0, "alice", "approve")
    store.review(p1, "alice", "edit", question="What does it return?")
    store.review(p2, "alice", "reject")
    store.review(make_pair(9)["pair_id"], "alice", "approve")

    decisions = {d["pair_id"]: d for d in store.decisions("ds")}
    assert set(decisions) == {p0, p1, p2}
    assert decisions[p1]["question"] == "What does it return?" and decisions[p1]["status"] == "edited"
    assert decisions[p2]["status"] == "rejected"
    for key in ("context", "evidence", "doc_path", "doc_title", "section", "chunk_id", "topic", "generator",
                "origin", "doc_id", "answer", "orig_question"):
        assert decisions[p1][key] == (pairs[1][key] if key in pairs[1] else pairs[1]["question"])
    assert len(store.decisions()) == 4


def test_export_edit_import_roundtrip(store, pairs, tmp_path):
    store.sync(pairs, "ds", "b1")
    store.review(pairs[3]["pair_id"], "alice", "approve")
    path = tmp_path / "out" / "review.jsonl"
    assert store.export_jsonl(path) == 4
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for key in ("pair_id", "status", "question", "answer", "orig_question", "orig_answer", "reviewer",
                "reviewed_at", "note", "context", "evidence", "doc_title", "section", "generator", "topic"):
        assert key in records[0]
    assert store.export_jsonl(tmp_path / "approved.jsonl", status="approved") == 1

    by_id = {r["pair_id"]: r for r in records}
    p0, p1, p2, p3 = (p["pair_id"] for p in pairs)
    by_id[p0]["status"] = "approved"
    by_id[p1].update(status="edited", answer="An offline correction.", note="fixed the wording")
    by_id[p2].update(status="rejected", note="duplicate")
    # p3 is left as exported (approved by alice): a no-op.
    path.write_text("".join(json.dumps(r) + "\n" for r in by_id.values()) + "\n")

    assert store.import_jsonl(path, reviewer="dave") == {"lines": 4, "changed": 3, "unchanged": 1}
    assert store.get(p0)["status"] == "approved" and store.get(p0)["reviewer"] == "dave"
    edited = store.get(p1)
    assert (edited["status"], edited["answer"], edited["note"]) == ("edited", "An offline correction.",
                                                                   "fixed the wording")
    assert store.get(p2)["status"] == "rejected"
    assert store.get(p3)["reviewer"] == "alice"
    [ev] = store.history(p1)
    assert (ev["action"], ev["reviewer"], ev["answer_before"], ev["answer_after"]) == (
        "import", "dave", pairs[1]["answer"], "An offline correction.")
    assert [e["action"] for e in store.history(p3)] == ["approve"]

    # Importing the same file again changes nothing and writes no events.
    assert store.import_jsonl(path, reviewer="dave") == {"lines": 4, "changed": 0, "unchanged": 4}
    assert store.stats()["events"] == 4

    # Reopening through a file, with the reviewer named on the line.
    path.write_text(json.dumps({"pair_id": p2, "status": "pending", "reviewer": "erin"}) + "\n")
    assert store.import_jsonl(path)["changed"] == 1
    assert store.get(p2)["status"] == "pending" and store.history(p2)[-1]["reviewer"] == "erin"


@pytest.mark.parametrize("bad_line, problem", [
    ("{not json", "invalid JSON"),
    ('{"pair_id": "does-not-exist", "status": "approved"}', "unknown pair_id 'does-not-exist'"),
    ('{"pair_id": "@P1", "status": "done"}', "bad status 'done'"),
    ('{"pair_id": "@P1"}', "missing status"),
    ('{"status": "approved"}', "missing pair_id"),
    ('[1, 2]', "not a JSON object"),
    ('{"pair_id": "@P1", "status": "edited", "answer": ""}', "empty answer"),
    ('{"pair_id": "@P1", "status": "approved", "answer": "changed"}', "set status 'edited'"),
    ('{"pair_id": "@P1", "status": "approved"}', "missing reviewer"),
    ('{"pair_id": "@P0", "status": "rejected", "reviewer": "x"}', "already appears on line 1"),
])
def test_bad_import_changes_nothing(store, pairs, tmp_path, bad_line, problem):
    store.sync(pairs, "ds", "b1")
    p0, p1 = pairs[0]["pair_id"], pairs[1]["pair_id"]
    good = [
        {"pair_id": p0, "status": "approved", "reviewer": "dave"},
        {"pair_id": pairs[2]["pair_id"], "status": "edited", "answer": "Good edit.", "reviewer": "dave"},
    ]
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(good[0]), bad_line.replace("@P1", p1).replace("@P0", p0), json.dumps(good[1])]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReviewError, match="line 2") as err:
        store.import_jsonl(path)
    assert problem in str(err.value)
    assert store.stats()["by_status"]["pending"] == 4 and store.stats()["events"] == 0
    assert store.get(pairs[2]["pair_id"])["answer"] == pairs[2]["answer"]


def test_import_unreadable_file(store, tmp_path):
    with pytest.raises(ReviewError, match="cannot read"):
        store.import_jsonl(tmp_path / "missing.jsonl", reviewer="dave")


def test_sync_rejects_bad_pairs(store, pairs):
    with pytest.raises(ReviewError, match="pair 2 has no pair_id"):
        store.sync([pairs[0], {"question": "q", "answer": "a"}], "ds", "b1")
    with pytest.raises(ReviewError, match="empty answer"):
        store.sync([{**pairs[0], "answer": " "}], "ds", "b1")
    assert store.stats()["total"] == 0  # all or nothing


def test_bad_url():
    with pytest.raises(ReviewError, match="invalid review database URL"):
        ReviewStore("not a url")


def test_cli(tmp_path, pairs):
    from typer.testing import CliRunner

    from app.cli.review import review_app

    db = tmp_path / "cli" / "review.db"
    store = ReviewStore(f"sqlite:///{db}")
    store.sync(pairs, "ds", "b1")
    store.review(pairs[0]["pair_id"], "alice", "reject", note="see [red]this[/red]")
    runner = CliRunner()
    opts = ["-s", f"data.review_db=sqlite:///{db}", "-s", f"accounts.db=sqlite:///{tmp_path / 'accounts.db'}"]
    from app.cli.users import users_app

    res = runner.invoke(users_app, ["add", "dave", "--role", "reviewer", "--password-stdin", *opts],
                        input="a long password\n")
    assert res.exit_code == 0, res.output
    assert runner.invoke(users_app, ["add", "ann", "--role", "annotator", "--password-stdin", *opts],
                         input="a long password\n").exit_code == 0

    res = runner.invoke(review_app, ["show", "no-such-pair", *opts])
    assert res.exit_code == 1 and "unknown pair id 'no-such-pair'" in res.output and "Traceback" not in res.output

    res = runner.invoke(review_app, ["show", pairs[0]["pair_id"], *opts])
    assert res.exit_code == 0, res.output
    assert "see [red]this[/red]" in res.output and "reject" in res.output

    res = runner.invoke(review_app, ["stats", *opts])
    assert res.exit_code == 0 and "pending 3" in res.output and "rejected 1" in res.output

    out = tmp_path / "pending.jsonl"
    res = runner.invoke(review_app, ["export", str(out), "--status", "pending", *opts])
    assert res.exit_code == 0 and "exported 3 items" in res.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    lines[0]["status"] = "approved"
    out.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    res = runner.invoke(review_app, ["import", str(out), *opts])
    assert res.exit_code == 2 and "--reviewer" in res.output  # an account is required
    res = runner.invoke(review_app, ["import", str(out), "--reviewer", "nobody", *opts])
    assert res.exit_code == 1 and "no account 'nobody'" in res.output
    res = runner.invoke(review_app, ["import", str(out), "--reviewer", "ann", *opts])
    assert res.exit_code == 1 and "lacks the reviewer role" in res.output
    assert store.stats()["events"] == 1
    res = runner.invoke(review_app, ["import", str(out), "--reviewer", "dave", *opts])
    assert res.exit_code == 0 and "1 changed, 2 unchanged" in res.output
    assert store.get(lines[0]["pair_id"])["status"] == "approved"
    assert store.history(lines[0]["pair_id"])[-1]["user_id"] == 1
