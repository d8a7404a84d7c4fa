"""Injected faults around a running stage (issue 16): each test says the fault, how it is injected and
what must hold.

Here: the MLflow server going away while `app dataset build` runs (and inside a run, in-process), and
a build killed half-way (a real build, and the dataset writer killed mid-write, and the states a kill
can leave next to the finished builds). The review database's faults (a lock held by another
connection, a full disk, its writer killed mid-transaction) need no services: they are in
tests/unit/data/test_review_faults.py.

The builds are the cheap kind of conftest's ``build_dataset`` (the small ``qa_docs`` corpus, LLM
generation off), started as child processes in their own process group and carrying an owner token,
so a test can kill exactly them and stop the Ray processes they leave behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import BIN, OWNER_VAR, ROOT, free_port, owned_processes, owner_token, stop_owned, summary_json

pytestmark = pytest.mark.integration

SPLITS = ("train", "validation", "test")
# One Ray Data actor per CPU stage instead of two: half the wall time on 2 cores, the same pairs.
FAST = ("--set", "data.concurrency=1")


class Build:
    """`app dataset build` over ``docs`` (as conftest's ``build_dataset``: no LLM generation, 20 pairs)
    as a child process in its own process group, with an owner token; its output is read as it comes."""

    def __init__(self, docs: Path, name: str, review_db: str, env: dict[str, str] | None = None, extra=()):
        self.token = owner_token()
        sets = ["--set", f"data.name={name}", "--set", "data.generation.enabled=false", "--set", "data.target_pairs=20",
                "--set", "data.min_test_pairs=1", "--set", f"data.review_db={review_db}", *extra]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BIN / "app"), "dataset", "build", "--docs", str(docs), *sets], cwd=ROOT, text=True,
            env={**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1", OWNER_VAR: self.token, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.out))

    def wait_until(self, condition, timeout: float, poll: float = 0.05) -> bool:
        """Poll ``condition()`` until it holds (True) or the build exits or the time is up (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.proc.poll() is not None:
                return bool(condition())
            time.sleep(poll)
        return False

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(10)
        return rc

    def kill(self) -> None:
        """SIGKILL the build's whole process group (the driver and whatever stayed in its group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait(60)

    def report(self) -> str:
        return f"exit {self.proc.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


@pytest.fixture
def builds():
    """Stops, by owner token, whatever the test's builds left running (their local Ray clusters)."""
    started: list[Build] = []
    yield started
    for b in started:
        if b.proc.poll() is None:
            b.kill()
        stop_owned(b.token, grace_s=5)


def dataset_folders(root: Path) -> tuple[list[Path], list[Path]]:
    """(version folders, other folders: hidden ones, e.g. a build's unfinished output) under a dataset root."""
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [p for p in folders if not p.name.startswith(".")], [p for p in folders if p.name.startswith(".")]


def complete(folder: Path) -> dict:
    """The manifest of a complete dataset folder (every split and file it lists), asserted."""
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) <= {p.name for p in folder.iterdir()}
    for split in SPLITS:
        frame = pd.read_parquet(folder / f"{split}.parquet")
        assert len(frame) == manifest["counts"]["splits"][split] > 0, (folder, split)
    assert manifest["leakage"]["overlaps"] == 0
    return manifest


def review_state(url: str) -> dict:
    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    try:
        return {
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
            "decisions": conn.execute("SELECT pair_id, status, question, answer, reviewer FROM review_items "
                                      "WHERE status != 'pending' ORDER BY pair_id").fetchall(),
            "events": conn.execute("SELECT COUNT(*) FROM review_events").fetchone()[0],
            "items": conn.execute("SELECT COUNT(*) FROM review_items").fetchone()[0],
        }
    finally:
        conn.close()


# -- the MLflow server gone mid-stage -----------------------------------------------------------------


@pytest.fixture
def own_mlflow(tmp_path):
    """A tracking server of this test only (SQLite backend in a temporary folder, a free port), started
    with an owner token so it can be stopped, and restarted on the same port and backend store."""
    from app.config import TrackingConfig
    from app.tracking import start_server

    token, root, port = owner_token(), tmp_path / "mlflow-home", free_port()

    class Server:
        uri = f"http://127.0.0.1:{port}"

        @staticmethod
        def start() -> str:
            os.environ[OWNER_VAR] = token  # start_server hands its environment to the server
            try:
                return start_server(TrackingConfig(port=port), root)
            finally:
                os.environ.pop(OWNER_VAR, None)

        @staticmethod
        def stop() -> list[int]:
            return stop_owned(token, grace_s=5)

    yield Server
    Server.stop()


def test_mlflow_server_gone_mid_stage(qa_docs, stored_model, own_mlflow, builds, tmp_path):
    """Fault: the MLflow tracking server goes away while a stage runs. Injected: a dataset build logs
    to a server of this test; once the build has opened its run and started reading documents (its
    "reading N documents" line), the server is stopped (SIGTERM, then SIGKILL, by owner token). The
    MLflow client is told to retry once (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1; its default, 7 retries with
    back-off, waits about 4 minutes per call before giving up).
    Must hold: the build exits non-zero with one `error:` line naming the tracking URI and no Python
    traceback; its outputs (the dataset folder, the review items) are on disk; the server restarted on
    the same backend store, the same build runs again and its run is logged, finished, with the dataset."""
    import mlflow

    from app.datasets import DatasetError, latest_dataset
    from app.tracking import _healthy

    uri = own_mlflow.start()
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    review_db = f"sqlite:///{tmp_path / 'review.db'}"
    name = f"fault-mlflow-{os.getpid()}"
    root = Path(os.environ["DOMAIN_LLM_HOME"]) / "datasets" / name
    t0 = time.monotonic()
    build = Build(qa_docs, name, review_db, env, FAST)
    builds.append(build)
    assert build.wait_until(lambda: build.said("reading "), 300), build.report()
    opened = time.monotonic() - t0
    stopped = own_mlflow.stop()
    assert stopped and not _healthy(uri)
    rc = build.wait(300)
    failed_after = time.monotonic() - t0
    leftovers = stop_owned(build.token, grace_s=5)

    assert rc == 1, build.report()
    errors = [line for line in build.err if line.startswith("error:")]
    assert len(errors) == 1 and uri in errors[0], build.report()
    assert "Traceback" not in build.stderr + build.stdout, build.report()
    # The outputs are kept: a complete dataset folder and the review items; LATEST still names no build
    # (the stage did not finish: its run is not logged).
    versions, hidden = dataset_folders(root)
    assert len(versions) == 1 and hidden == [], (versions, hidden)
    manifest = complete(versions[0])
    assert manifest["review_sync"]["new"] > 0
    assert review_state(review_db)["items"] == manifest["review_sync"]["new"]
    assert f"dataset written to {versions[0]}" in build.stdout and "outputs" in errors[0]
    with pytest.raises(DatasetError):
        latest_dataset(_cfg(name))

    # Back on the same backend store: the re-run is logged.
    assert own_mlflow.start() == uri
    t1 = time.monotonic()
    again = Build(qa_docs, name, review_db, env, FAST)
    builds.append(again)
    assert again.wait(600) == 0, again.report()
    rerun_s = time.monotonic() - t1
    summary = summary_json(again.stdout)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset.version"] == summary["version"]
    assert run.data.metrics["pairs_total"] == sum(summary["pairs"].values()) == manifest["counts"]["total"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "dataset")} >= {"dataset/manifest.json"}
    runs = client.search_runs([run.info.experiment_id])
    first = [r for r in runs if r.info.run_id != run.info.run_id]
    assert len(first) == 1  # the interrupted build's run, opened before the server went away
    assert latest_dataset(_cfg(name)) == Path(summary["path"])
    print(f"\nMLflow gone: run opened after {opened:.0f} s, server stopped ({len(stopped)} processes), build "
          f"exited {rc} after {failed_after:.0f} s: {errors[0].strip()}; {len(leftovers)} leftover processes stopped; "
          f"first run left {first[0].info.status}; re-run logged in {rerun_s:.0f} s")


def test_stage_error_kept_when_the_tracking_server_is_gone(own_mlflow, monkeypatch):
    """Fault: the tracking server goes away inside a stage's run and the stage then fails on its own
    (in-process, no build). Injected: ``start_run`` against this test's own server, stopped inside the
    block, then the block raises a DatasetError. Must hold, under MLflow's default retry settings: the
    stage's error reaches the caller unchanged (not a tracking error) and at once (the failed run is
    closed with one try, not after the ~4 minutes of retries MLflow spends on an unreachable server),
    and no run stays active in the process (nothing retries at exit). The build test above covers a
    logging call failing: a TrackingError naming the URI."""
    import mlflow

    from app.datasets import DatasetError
    from app.tracking import start_run

    saved = mlflow.get_tracking_uri()
    uri = own_mlflow.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    try:
        with pytest.raises(DatasetError, match="the stage's own error"):
            with start_run(_cfg("tracking-gone"), "unit-stage"):
                own_mlflow.stop()
                t0 = time.monotonic()
                raise DatasetError("the stage's own error")
        closed_s = time.monotonic() - t0
    finally:
        mlflow.set_tracking_uri(saved)
    assert closed_s < 20 and mlflow.active_run() is None
    print(f"\nstage error kept; failed run closed {closed_s:.1f} s after the server stopped")


def _cfg(name: str):
    from app.config import load_config

    return load_config(None, [f"data.name={name}"])


# -- the build killed half-way ----------------------------------------------------------------------------


def test_dataset_build_killed_half_way(qa_build, qa_docs, builds, tmp_path):
    """Fault: a dataset build is killed half-way (power cut, OOM killer, `kill -9`). Injected: a dataset
    whose latest build is the session's clean build (``qa_build``, copied in) and whose review database
    holds a reviewer's decisions is built again; the build is SIGKILLed (its process group, then whatever
    else carries its owner token: the local Ray cluster it started) half-way, when it starts scoring the
    extracted pairs on Ray Data (its "scoring N extracted pairs" line: documents read, actors starting).
    Must hold: LATEST still names the clean build and nothing unfinished looks like a version; no process
    of the killed build is left; the review database passes integrity_check with the same decisions; the
    same build run again succeeds with a complete dataset (all splits, no leaks) holding the same pairs
    as the clean build (same content hash), with the decisions applied, and becomes the latest.
    A kill while the dataset is being written: test_build_killed_while_writing_its_dataset below (a
    kill there costs a whole build here). Builds use data.concurrency=1 (twice as fast on 2 cores; the
    content hash shows the pairs do not depend on it)."""
    from app.data.review import ReviewStore
    from app.datasets import latest_dataset, publish_latest

    clean_path = Path(qa_build["summary"]["path"])
    baseline = complete(clean_path)
    name = f"fault-kill-{os.getpid()}"
    cfg = _cfg(name)
    root = Path(os.environ["DOMAIN_LLM_HOME"]) / "datasets" / name
    shutil.copytree(clean_path, root / baseline["version"])
    publish_latest(cfg, baseline["version"])

    # The review database as the clean build left it (its pairs, pending), then a reviewer's decisions
    # that keep the pairs: rejections of pairs the quality filter rejected. (An approval would re-embed
    # the approved text in the build's driver: 15-20 s more per build for loading MiniLM there.)
    review_db = f"sqlite:///{tmp_path / 'review.db'}"
    rows = [{**r, "accepted": True, "reject_reason": ""} for s in SPLITS
            for r in pd.read_parquet(clean_path / f"{s}.parquet").to_dict("records")]
    rows += pd.read_json(clean_path / "rejected.jsonl", lines=True).to_dict("records")
    store = ReviewStore(review_db)
    store.sync([r for r in rows if r["question"] and r["answer"]], dataset=name, build=baseline["version"])
    rejected = [i for i in store.items(limit=1000) if not i["auto_accepted"]][:5]
    for item in rejected:
        store.review(item["pair_id"], "alice", "reject", note="confirmed")
    store.close()
    before = review_state(review_db)
    assert len(before["decisions"]) == 5 and before["integrity"] == "ok"

    t0 = time.monotonic()
    killed = Build(qa_docs, name, review_db, extra=FAST)
    builds.append(killed)

    assert killed.wait_until(lambda: killed.said("scoring "), 600), killed.report()
    killed.kill()
    killed_after = time.monotonic() - t0
    left = owned_processes(killed.token)
    stopped = stop_owned(killed.token, grace_s=5)
    assert owned_processes(killed.token) == []

    versions, hidden = dataset_folders(root)
    assert [p.name for p in versions] == [baseline["version"]] and hidden == []
    assert latest_dataset(cfg).name == baseline["version"]  # the clean build, not the killed one
    for folder in versions:  # whatever is named as a version is complete
        complete(folder)
    after_kill = review_state(review_db)
    assert after_kill["integrity"] == "ok"
    assert after_kill["decisions"] == before["decisions"] and after_kill["events"] == before["events"]

    t1 = time.monotonic()
    again = Build(qa_docs, name, review_db, extra=FAST)
    builds.append(again)
    assert again.wait(600) == 0, again.report()
    rerun_s = time.monotonic() - t1
    summary = summary_json(again.stdout)
    manifest = complete(Path(summary["path"]))
    assert latest_dataset(cfg) == Path(summary["path"]) != clean_path
    assert manifest["counts"]["splits"] == baseline["counts"]["splits"]
    assert manifest["content_hash"] == baseline["content_hash"]
    assert manifest["reviews"] == {"rejected": len(rejected)}
    final = review_state(review_db)
    assert final["integrity"] == "ok" and final["decisions"] == before["decisions"]
    assert final["items"] == before["items"] and final["events"] == before["events"]
    assert dataset_folders(root)[1] == []  # nothing unfinished left beside the versions
    print(f"\nkilled build: killed {killed_after:.1f} s in, leaving {[p.name for p in hidden] or 'no hidden folder'} "
          f"beside versions {[p.name for p in versions]}; {len(left)} of its processes outlived the group kill "
          f"({len(stopped)} stopped by token); re-run {rerun_s:.0f} s: {manifest['counts']['splits']}, "
          f"content {manifest['content_hash'][:8]} as the clean build; review sync {manifest['review_sync']}")


WRITE_AND_DIE = """
import os, signal, sys
import numpy as np, pandas as pd
import app.data.build as build
from app.config import load_config

# SIGKILL in the middle of write_dataset: the splits, rejected pairs and chunks are written, the
# score plot and the manifest are not.
build._plot_scores = lambda frame, path: os.kill(os.getpid(), signal.SIGKILL)
cfg = load_config(None, ["data.name=" + sys.argv[1]])
rows = [{"pair_id": f"p{i}", "question": f"What is {i}?", "answer": f"It is {i}.", "context": f"{i} is {i}.",
         "topic": "t", "generator": "definition"} for i in range(30)]
splits = {"train": rows[:20], "validation": rows[20:25], "test": rows[25:]}
scored = pd.DataFrame([{**r, "accepted": i < 28, "q_embedding": np.zeros(4), "a_embedding": np.zeros(4)}
                       for i, r in enumerate(rows)])
chunks = pd.DataFrame([{"chunk_id": "c0", "text": "x"}])
build.write_dataset(cfg, cfg.paths.resolved_home(), splits, scored, chunks, [], [], [], {})
print("not killed")
"""


def test_build_killed_while_writing_its_dataset(tmp_path, monkeypatch):
    """Fault: a build killed while it writes its dataset folder. Injected: a child process runs the
    build's own ``write_dataset`` on a small set of pairs with the score plot (written after the
    splits, before the manifest) replaced by a SIGKILL of itself; the dataset already has a finished
    build named in LATEST. Must hold: what the killed writer left is a hidden ``.partial-*`` folder
    (nothing that looks like a version, no manifest), LATEST still names the finished build, and the
    next build's writer removes the leftover. (Before the fix the half-written folder carried the
    version's own name, next to the finished ones.)"""
    from app.datasets import latest_dataset, publish_latest, remove_stale_partials

    name = "killed-writer"
    monkeypatch.setenv("DOMAIN_LLM_HOME", str(tmp_path / "home"))
    cfg = _cfg(name)
    root = tmp_path / "home" / "datasets" / name
    (root / "20260101-000000-aaaaaaaa").mkdir(parents=True)
    publish_latest(cfg, "20260101-000000-aaaaaaaa")
    proc = subprocess.run([str(BIN / "python"), "-c", WRITE_AND_DIE, name], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    versions, hidden = dataset_folders(root)
    assert [p.name for p in versions] == ["20260101-000000-aaaaaaaa"]
    assert len(hidden) == 1 and hidden[0].name.startswith(".partial-")
    left = sorted(p.name for p in hidden[0].iterdir())
    assert "train.parquet" in left and "manifest.json" not in left
    assert latest_dataset(cfg) == root / "20260101-000000-aaaaaaaa"
    assert remove_stale_partials(cfg) == hidden  # the writer's process is gone
    assert dataset_folders(root)[1] == []
    print(f"\nkilled writer left {hidden[0].name} with {left}; LATEST kept; leftover removed")


def test_latest_never_names_an_unfinished_build(tmp_path, monkeypatch):
    """Fault: what a build killed at any instant can leave next to the finished builds. Injected: by
    hand, the states a kill leaves: an unfinished ``.partial-*`` folder of a dead build (and one of a
    live build, and one of another host), a LATEST file torn empty, or naming a folder that is not
    there or is unfinished. Must hold: ``latest_dataset`` returns a finished version or raises a
    DatasetError, never the dataset root or an unfinished folder; LATEST is replaced whole (no
    temporary file stays); only the dead build's folder on this host is removed."""
    import socket

    from app.datasets import (
        DatasetError,
        datasets_root,
        latest_dataset,
        partial_folder,
        publish_latest,
        remove_stale_partials,
    )

    monkeypatch.setenv("DOMAIN_LLM_HOME", str(tmp_path / "home"))
    cfg = _cfg("pointer")
    root = datasets_root(cfg)
    (root / "20260101-000000-aaaaaaaa").mkdir(parents=True)
    publish_latest(cfg, "20260101-000000-aaaaaaaa")
    assert latest_dataset(cfg) == root / "20260101-000000-aaaaaaaa"
    assert sorted(p.name for p in root.iterdir()) == ["20260101-000000-aaaaaaaa", "LATEST"]

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that has exited (and been reaped)
    host = socket.gethostname()
    stale = root / f".partial-20260102-000000-bbbbbbbb-{dead.pid}-{host}"
    live = partial_folder(cfg, "20260102-000000-cccccccc")
    elsewhere = root / f".partial-20260102-000000-dddddddd-{dead.pid}-not-{host}"
    for folder in (stale, live, elsewhere):
        folder.mkdir()
        (folder / "train.parquet").write_bytes(b"half")
    for torn in ("", "\n", live.name, "20260102-000000-ffffffff", "../pointer"):
        (root / "LATEST").write_text(torn)
        with pytest.raises(DatasetError, match="run `app dataset build`"):
            latest_dataset(cfg)
    assert remove_stale_partials(cfg) == [stale]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        ["20260101-000000-aaaaaaaa", live.name, elsewhere.name])
