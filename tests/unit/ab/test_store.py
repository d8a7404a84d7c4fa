"""The experiment database on real SQLite: nothing lost across a lock or a restart; feedback validated."""

import json
import os
import sqlite3
import threading
import time

import pytest

from app.ab.store import EventWriter, ExperimentStore, FeedbackError


def event(i, **kw):
    return {"id": f"r{i}", "experiment": "exp", "unit": f"u{i % 7}", "arm": "base" if i % 2 else "ft",
            "model": "m", "role": "served", "status": "ok", "question": f"q{i}", "answer": f"a{i}",
            "e2e_ms": 10.0 + i, **kw}


def test_events_are_stored_and_the_spool_is_emptied(tmp_path):
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    w = EventWriter(url, tmp_path / "spool", interval_s=0.05)
    for i in range(50):
        w.record(event(i))
    assert w.flush(10)
    store = ExperimentStore(url)
    rows = store.requests("exp")
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(50))
    assert store.counts("exp") == {"base": 25, "ft": 25}
    assert w.close()
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


def test_a_locked_database_delays_events_but_loses_none(tmp_path):
    db = tmp_path / "ab.db"
    url = f"sqlite:///{db}?timeout=0.2"
    w = EventWriter(url, tmp_path / "spool", interval_s=0.05, max_backoff_s=0.3)
    holder = sqlite3.connect(db, timeout=0.1, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for a while
    for i in range(20):
        w.record(event(i))
    time.sleep(1.5)
    assert w.stats["retries"] >= 1 and "locked" in w.stats["last_error"]
    assert len(w.pending_ids()) == 20
    holder.execute("ROLLBACK")
    holder.close()
    assert w.flush(15)
    assert len(ExperimentStore(url).requests("exp")) == 20
    w.close()


def test_a_writer_killed_before_flushing_leaves_its_events_to_the_next(tmp_path):
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    spool = tmp_path / "spool"
    w = EventWriter(url, spool, interval_s=60)  # its thread never gets to flush
    for i in range(10):
        w.record(event(i))
    w._stop.set()  # the process dies: no close(), no flush
    assert len(ExperimentStore(url).requests("exp")) == 0
    with (next(spool.glob("*.jsonl"))).open("a") as f:
        f.write('{"id": "torn", "experim')  # a line cut by the crash
    w2 = EventWriter(url, spool, interval_s=0.05)
    assert w2.stats["replayed"] == 10
    w2.record(event(10))
    w2.record(event(3))  # already stored by the replay: ignored, not an error
    assert w2.flush(10)
    assert sorted(r["id"] for r in ExperimentStore(url).requests("exp")) == sorted(f"r{i}" for i in range(11))
    w2.close()


def test_feedback_is_validated_and_stored_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    w = EventWriter(url, tmp_path / "spool", interval_s=0.05)
    w.record(event(1))
    w.record(event(2, role="shadow", primary_id="r1"))
    store = ExperimentStore(url, pending=w)
    got = store.add_feedback("r1", "alice", thumbs_up=True, rating=4)  # waits for the writer if needed
    assert got["arm"] == "base"
    cases = [("r1", {"thumbs_up": False}, 409, "already given"),
             ("nope", {"thumbs_up": True}, 404, "no response with request id 'nope'"),
             ("r2", {"thumbs_up": True}, 400, "shadow call"),
             ("r1", {"rating": 6}, 422, "1 to 5"),
             ("r1", {"rating": True}, 422, "1 to 5"),
             ("r1", {}, 422, "thumbs_up")]
    for rid, kw, status, message in cases:
        with pytest.raises(FeedbackError, match=message) as exc:
            store.add_feedback(rid, "alice", wait_s=0.2, **kw)
        assert exc.value.status == status
    rows = {r["id"]: r for r in store.requests("exp")}
    assert rows["r1"]["thumbs_up"] is True and rows["r1"]["rating"] == 4 and rows["r2"]["thumbs_up"] is None
    w.close()


def test_concurrent_recording_from_threads(tmp_path):
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    w = EventWriter(url, tmp_path / "spool", interval_s=0.01, batch=7, rotate_every=50)

    def burst(k):
        for i in range(100):
            w.record(event(k * 1000 + i))

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.flush(20)
    assert len(ExperimentStore(url).requests("exp")) == 400
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 1  # rotated files deleted once committed
    w.close()
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


def test_split_changes_are_kept_in_order(tmp_path):
    store = ExperimentStore(f"sqlite:///{tmp_path / 'ab.db'}")
    store.record_split("exp", {"base": 0.5, "ft": 0.5}, "start")
    store.record_split("exp", {"base": 0.0, "ft": 1.0}, "promoted ft")
    assert [s["reason"] for s in store.splits("exp")] == ["start", "promoted ft"]


def test_a_live_writers_spool_is_left_to_it(tmp_path):
    """Two ingress replicas on one node share the spool folder: a starting writer replays the files of dead
    processes only, never the open file of a live one (which would lose what it appends next)."""
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    spool = tmp_path / "spool"
    spool.mkdir()
    live = spool / f"{os.getppid()}-abcd1234.jsonl"  # the test runner's parent: alive
    live.write_text(json.dumps(event(1)) + "\n")
    dead = spool / "999999999-abcd1234.jsonl"  # beyond any pid: dead
    dead.write_text(json.dumps(event(2)) + "\n")
    w = EventWriter(url, spool, interval_s=0.05)
    assert w.stats["replayed"] == 1 and live.exists() and not dead.exists()
    w.close()
