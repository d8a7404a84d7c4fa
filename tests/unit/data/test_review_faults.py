"""Injected faults under the review database: another connection holding its lock, and a full disk.

Both run against a real SQLite file (no services). What must hold: every write either lands once or
fails whole with a :class:`ReviewError` that names the database and the cause (never a raw driver
error or traceback), and the decisions already committed stay intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app.cli.common import handled
from app.data.review import ReviewError, ReviewStore
from app.db import SQLITE_TIMEOUT_S
from tests.unit.data.test_review import make_pair


def db_url(path: Path, timeout_s: float | None = None) -> str:
    return f"sqlite:///{path}" + (f"?timeout={timeout_s:g}" if timeout_s is not None else "")


@contextlib.contextmanager
def held_lock(path: Path, mode: str):
    """A second connection (another process's, as far as SQLite knows) holding ``BEGIN <mode>``."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def snapshot(path: Path) -> dict:
    """Everything a reviewer committed, read with a fresh connection (not the store's)."""
    conn = sqlite3.connect(path)
    try:
        return {
            "items": conn.execute("SELECT pair_id, status, question, answer, reviewer, note FROM review_items "
                                  "ORDER BY pair_id").fetchall(),
            "events": conn.execute("SELECT id, pair_id, reviewer, action, status_before, status_after, "
                                   "answer_after FROM review_events ORDER BY id").fetchall(),
        }
    finally:
        conn.close()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def chain_breaks(store: ReviewStore, pair_ids) -> int:
    """History links where an event does not start from the status the previous one left (a lost update)."""
    breaks = 0
    for pid in pair_ids:
        status = "pending"
        for ev in store.history(pid):
            breaks += ev["status_before"] != status
            status = ev["status_after"]
        breaks += status != store.get(pid)["status"]
    return breaks


@pytest.mark.parametrize("mode", ["IMMEDIATE", "EXCLUSIVE"])
def test_review_writes_wait_for_a_lock_held_by_another_connection(tmp_path, mode):
    """Fault: another connection holds the review database's write lock (BEGIN IMMEDIATE: others may
    still read; BEGIN EXCLUSIVE: nobody may) while reviewers write from 16 threads: one approve, edit
    or reject on each of 12 pairs, a rebuild's sync, and three reviewers racing on one shared pair.
    Injected: a raw sqlite3 connection takes the lock, then releases it after 1.5 s.
    Must hold: every write waits (none before the release), then lands exactly once: one event per
    action, no error, no duplicate; the racing reviewers' history is one unbroken chain (each event
    starts from the status the previous one left)."""
    path = tmp_path / "review.db"
    store = ReviewStore(db_url(path))
    pairs = [make_pair(i) for i in range(13)]
    store.sync(pairs, "ds", "b1")
    shared = pairs[12]["pair_id"]
    done: list[tuple[str, float]] = []
    errors: list[str] = []

    def attempt(name: str, call) -> None:
        try:
            call()
            done.append((name, time.monotonic()))
        except Exception as exc:  # any failure is a finding: collect, assert below
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    def one(i: int) -> None:
        action = ("approve", "edit", "reject")[i % 3]
        extra = {"answer": f"Edited answer {i}."} if action == "edit" else {}
        attempt(f"review-{i}", lambda: store.review(pairs[i]["pair_id"], f"rev{i}", action, **extra))

    def racer(k: int) -> None:  # approve then reject the shared pair; a reopen may find it pending already
        for action in ("approve", "reject"):
            attempt(f"race-{k}-{action}", lambda a=action: store.review(shared, f"racer{k}", a, note=f"{k}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    threads += [threading.Thread(target=racer, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=attempt, args=("sync", lambda: store.sync(pairs, "ds", "b2")),))
    with held_lock(path, mode):
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(1.5)
        landed_while_locked = len(done)
        released = time.monotonic()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0

    assert errors == []
    assert landed_while_locked == 0
    attempted = 12 + 3 * 2 + 1
    assert len(done) == attempted, done
    assert all(at >= released for _, at in done)
    stats = store.stats()
    assert stats["events"] == 12 + 3 * 2  # one event per review action: none lost, none duplicated
    for i in range(12):
        history = store.history(pairs[i]["pair_id"])
        assert [(e["reviewer"], e["action"]) for e in history] == [(f"rev{i}", ("approve", "edit", "reject")[i % 3])]
    assert store.get(pairs[1]["pair_id"])["answer"] == "Edited answer 1."
    assert chain_breaks(store, [p["pair_id"] for p in pairs]) == 0
    assert len(store.history(shared)) == 6
    assert store.get(pairs[0]["pair_id"])["last_seen_build"] == "b2"
    assert integrity(path) == "ok"
    print(f"{mode}: {attempted} writes attempted, {len(done)} landed, 0 lost, {stats['events']} events; "
          f"all waited for the release; {elapsed:.1f} s")
    store.close()


def test_concurrent_reviews_of_one_pair_keep_a_consistent_history(tmp_path):
    """Fault: eight reviewers act on the same two pairs at once (approve, reject, reopen, 25 each).
    Injected: plain threads, no lock held. Must hold: each write reads the item inside its own write
    transaction, so every event starts from the status the previous one left and a reopen of a pending
    pair is refused, as it is one at a time. (Before the fix a review read the item outside its write
    transaction: 46 of 180 events recorded a stale status_before.)"""
    import random

    store = ReviewStore(db_url(tmp_path / "review.db"))
    pairs = [make_pair(i) for i in range(2)]
    store.sync(pairs, "ds", "b1")
    landed, refused, other = [0], [0], []

    def work(t: int) -> None:
        rng = random.Random(t)
        for k in range(25):
            try:
                store.review(pairs[k % 2]["pair_id"], f"r{t}", rng.choice(["approve", "reject", "reopen"]))
                landed[0] += 1
            except ReviewError as exc:
                assert "already pending" in str(exc)
                refused[0] += 1
            except Exception as exc:
                other.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert other == []
    assert landed[0] + refused[0] == 200
    assert store.stats()["events"] == landed[0]
    assert chain_breaks(store, [p["pair_id"] for p in pairs]) == 0
    store.close()


def test_lock_held_past_the_timeout_fails_clearly_and_writes_nothing(tmp_path):
    """Fault: another connection keeps the write lock longer than the store waits. Injected: BEGIN
    IMMEDIATE held for the whole attempt, the store opened with a 1 s timeout (``?timeout=1``; the
    default stays 30 s). Must hold: each write (a review, a sync of new pairs, an import) fails after
    about 1 s with a ReviewError naming the database file and "locked"; nothing partial is stored (no
    event, no status change, no new item) and the same writes succeed once the lock is released."""
    assert SQLITE_TIMEOUT_S == 30
    path = tmp_path / "review.db"
    store = ReviewStore(db_url(path, 1))
    pairs = [make_pair(i) for i in range(6)]
    store.sync(pairs[:4], "ds", "b1")
    store.review(pairs[0]["pair_id"], "alice", "approve")
    before = snapshot(path)
    offline = tmp_path / "offline.jsonl"
    offline.write_text('{"pair_id": "%s", "status": "rejected", "reviewer": "carol"}\n' % pairs[2]["pair_id"])

    with held_lock(path, "IMMEDIATE"):
        for name, call in (("review", lambda: store.review(pairs[1]["pair_id"], "bob", "edit", answer="New.")),
                           ("sync", lambda: store.sync(pairs, "ds", "b2")),
                           ("import", lambda: store.import_jsonl(offline))):
            t0 = time.monotonic()
            with pytest.raises(ReviewError) as info:
                call()
            waited = time.monotonic() - t0
            message = str(info.value)
            assert "review database" in message and str(path) in message, message
            assert "locked" in message and "1 s timeout" in message and "nothing was written" in message
            assert 0.9 <= waited < 5, (name, waited)
            assert "\n" not in message
    assert snapshot(path) == before
    assert integrity(path) == "ok"
    # Released: the same writes land.
    store.review(pairs[1]["pair_id"], "bob", "edit", answer="New.")
    assert store.sync(pairs, "ds", "b2")["new"] == 2
    assert store.import_jsonl(offline)["changed"] == 1
    assert store.stats()["events"] == 3
    store.close()


def test_bad_timeout_in_the_url_is_a_clear_error(tmp_path):
    with pytest.raises(ReviewError, match="timeout must be a number of seconds"):
        ReviewStore(f"sqlite:///{tmp_path / 'r.db'}?timeout=soon")


SYNC_FOREVER = """
import sys
from app.data.review import ReviewStore
from tests.unit.data.test_review import make_pair

store = ReviewStore(sys.argv[1])
for batch in range(1000):  # whole syncs of 500 new pairs each, until killed
    store.sync([make_pair(10_000 + batch * 500 + i, answer="A long answer. " * 20) for i in range(500)], "ds", f"b{batch}")
    print(batch, flush=True)
"""


def test_process_killed_in_the_middle_of_a_sync(tmp_path):
    """Fault: the process writing the review database is killed in the middle of a transaction (a
    dataset build killed while it syncs its pairs). Injected: a child process syncs batches of 500
    pairs in a loop; once it has committed two, it is SIGKILLed while its third or later transaction
    is open (its rollback journal exists). Must hold: the next opener finds an intact database
    (integrity_check ok) holding only whole syncs (a multiple of 500 new items), the reviewer's
    decisions and events unchanged, and it can write again."""
    path = tmp_path / "review.db"
    url = db_url(path)
    store = ReviewStore(url)
    pairs = [make_pair(i) for i in range(6)]
    store.sync(pairs, "ds", "b0")
    store.review(pairs[0]["pair_id"], "alice", "approve")
    store.review(pairs[1]["pair_id"], "alice", "edit", answer="Edited.")
    store.close()
    before = snapshot(path)
    root = Path(__file__).resolve().parents[3]
    child = subprocess.Popen([sys.executable, "-c", SYNC_FOREVER, url], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(2):
            assert child.stdout.readline(), "the syncing process ended early"
        journal = path.with_name(path.name + "-journal")
        deadline = time.monotonic() + 60
        while not journal.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert journal.exists(), "no write transaction seen"
        child.kill()
    finally:
        child.kill()
        child.wait(30)
    assert integrity(path) == "ok"
    after = ReviewStore(url)  # rolls the torn transaction back (the hot journal)
    assert integrity(path) == "ok"
    items = after.count()
    assert (items - 6) % 500 == 0 and items >= 6 + 2 * 500, items
    kept = snapshot(path)
    assert [i for i in kept["items"] if i[1] != "pending"] == [i for i in before["items"] if i[1] != "pending"]
    assert kept["events"] == before["events"]
    after.review(pairs[2]["pair_id"], "bob", "reject")
    assert after.stats()["events"] == 3
    after.close()
    print(f"killed mid-sync: {(items - 6) // 500} whole syncs kept, torn one rolled back; decisions intact")


# -- disk full ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs mounted on a temporary folder (unmounted after the test)."""
    if not shutil.which("mount"):
        pytest.skip("no mount command: cannot make a size-limited file system")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a 1 MB tmpfs is not permitted here ({proc.stderr.strip() or proc.returncode}): "
                    "the disk-full fault needs root or CAP_SYS_ADMIN")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> int:
    """Write a filler file until the file system refuses even one more byte; its size."""
    size = 0
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for block in (1 << 16, 1 << 12, 1 << 9, 1):
            chunk = b"\0" * block
            while True:
                try:
                    size += os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return size


def test_disk_full_under_the_review_database(small_disk, tmp_path):
    """Fault: the disk holding the review database fills up. Injected: the database lives on a 1 MB
    tmpfs; after 30 pairs are synced and 9 of them reviewed, a filler file takes every free byte.
    Then: single reviews (approve, edit, reject), a sync of 400 new pairs, an offline import, and a
    CLI command that writes. Must hold: each fails with a ReviewError naming the database and SQLite's
    cause ("database or disk is full"); the command prints one `error:` line and exits 1, no
    traceback; the database still opens, passes PRAGMA integrity_check and holds every committed
    decision and event unchanged; once space is freed, writes work again."""
    path = small_disk / "review.db"
    url = db_url(path, 1)
    store = ReviewStore(url)
    pairs = [make_pair(i) for i in range(30)]
    store.sync(pairs, "ds", "b1")
    for i in range(9):
        action = ("approve", "edit", "reject")[i % 3]
        store.review(pairs[i]["pair_id"], "alice", action, **({"answer": f"Edited {i}."} if action == "edit" else {}))
    before = snapshot(path)
    decisions = store.decisions("ds")
    filler = fill(small_disk)
    assert shutil.disk_usage(small_disk).free == 0

    many = [make_pair(1000 + i, answer="A long answer. " * 40) for i in range(400)]
    offline = tmp_path / "offline.jsonl"
    offline.write_text('{"pair_id": "%s", "status": "approved", "reviewer": "carol"}\n' % pairs[20]["pair_id"])
    attempts = {
        "approve": lambda: store.review(pairs[10]["pair_id"], "bob", "approve"),
        "edit": lambda: store.review(pairs[11]["pair_id"], "bob", "edit", answer="A new answer."),
        "reject": lambda: store.review(pairs[12]["pair_id"], "bob", "reject", note="wrong"),
        "sync": lambda: store.sync(pairs + many, "ds", "b2"),
        "import": lambda: store.import_jsonl(offline),
    }
    failed = {}
    for name, call in attempts.items():
        with pytest.raises(ReviewError) as info:
            call()
        failed[name] = str(info.value)
    for name, message in failed.items():
        assert f"review database {url}" in message, (name, message)
        assert "database or disk is full" in message and "nothing was written" in message, (name, message)

    # What a user of any command sees: one line, exit 1.
    cli = typer.Typer()

    @cli.command()
    @handled
    def approve() -> None:
        ReviewStore(url).review(pairs[13]["pair_id"], "bob", "approve")

    res = CliRunner().invoke(cli, [])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("error: cannot write to the review database") and "disk is full" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") <= 2, res.output

    store.close()
    assert integrity(path) == "ok"
    assert snapshot(path) == before
    reopened = ReviewStore(url)
    assert reopened.decisions("ds") == decisions and len(decisions) == 9
    assert reopened.count() == 30

    (small_disk / "filler").unlink()
    reopened.review(pairs[10]["pair_id"], "bob", "approve")
    assert reopened.sync(pairs + many[:50], "ds", "b2")["new"] == 50
    assert integrity(path) == "ok"
    reopened.close()
    print(f"disk full: filler {filler} bytes; {len(attempts) + 1} writes attempted, 0 landed, "
          f"{len(before['events'])} committed events kept")
