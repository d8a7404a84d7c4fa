"""Shared fixtures: an isolated app home, the real base model converted once, a real MLflow server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from app.serving.manager import free_port  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """DOMAIN_LLM_HOME for the whole session, so the base model is converted once."""
    path = tmp_path_factory.mktemp("home")
    os.environ["DOMAIN_LLM_HOME"] = str(path)
    # Nothing in the tests may reach a model hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    return path


@pytest.fixture(scope="session")
def stored_model(home):
    """The embedded default model, converted from its GGUF file into the session's store."""
    from app.config import ModelConfig
    from app.model_store import ModelStore

    return ModelStore(home / "models").prepare(ModelConfig())


@pytest.fixture(scope="session")
def mlflow_uri(home):
    """A real MLflow server (SQLite backend) on a free port; MLFLOW_TRACKING_URI points at it."""
    from app.config import TrackingConfig
    from app.tracking import start_server, stop_server

    uri = start_server(TrackingConfig(port=free_port()), home)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    stop_server(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


FAQ_HTML = """<html><head><title>Team FAQ</title></head><body><h1>Deployment FAQ</h1>
<p><b>Q:</b> How long does a canary deployment of the billing service run?</p>
<p><b>A:</b> A canary deployment of the billing service runs for thirty minutes before full rollout.</p>
<h2>Who approves a rollback of the billing service?</h2>
<p>The on-call engineer of the billing team approves every rollback of the billing service.</p>
<script>alert("ignored")</script></body></html>"""


@pytest.fixture(scope="session")
def qa_docs(tmp_path_factory) -> Path:
    """A small team corpus: eight standard modules and five language topics as Markdown, an HTML FAQ,
    a PDF, and files that cannot be read (empty, binary, latin-1, an image)."""
    from app.data.corpus import export_stdlib_docs
    from tests.unit.data.test_formats import tiny_pdf

    root = tmp_path_factory.mktemp("docs")
    export_stdlib_docs(root / "stdlib", progress=lambda _: None,
                       modules=["json", "heapq", "bisect", "shutil", "textwrap", "fnmatch", "glob", "statistics"],
                       topics=["if", "while", "assert", "del", "pass"])
    (root / "team").mkdir()
    (root / "team" / "faq.html").write_text(FAQ_HTML)
    (root / "team" / "notes.pdf").write_bytes(tiny_pdf("The billing service stores invoices for seven years."))
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.md").write_bytes(b"")
    (bad / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (bad / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (bad / "image.png").write_bytes(b"\x89PNG\r\n")
    return root


def summary_json(stdout: str) -> dict:
    """The JSON summary a stage command prints last. Worker log lines forwarded by Ray may still
    arrive after it, so only the object itself is decoded."""
    import json

    return json.JSONDecoder().raw_decode(stdout[stdout.rindex('{\n  "run_id"'):])[0]


def build_dataset(docs: Path, name: str, review_db: str, extra=()):
    """`app dataset build` over ``docs`` without LLM generation; (summary, process)."""

    sets = ["--set", f"data.name={name}", "--set", "data.generation.enabled=false", "--set", "data.target_pairs=20",
            "--set", "data.min_test_pairs=1", "--set", f"data.review_db={review_db}", *extra]
    proc = run_cli("app", "dataset", "build", "--docs", str(docs), *sets, env={"RAY_ADDRESS": ""}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return summary_json(proc.stdout), proc


@pytest.fixture(scope="session")
def qa_build(qa_docs, tmp_path_factory, mlflow_uri, stored_model):
    """The dataset it-build, built once for the session (the dataset tests check it, training uses it)."""
    db = f"sqlite:///{tmp_path_factory.mktemp('review') / 'review.db'}"
    summary, proc = build_dataset(qa_docs, "it-build", db)
    return {"summary": summary, "db": db, "stdout": proc.stdout}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path = ROOT):
    """Run the installed `app` command (or another console script) and capture its output."""
    cmd = [str(BIN / args[0]), *args[1:]]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


# -- processes a test started, and only those --------------------------------------------------------
# Fixtures stop what they started by process id, never by name (`pkill -f VLLM::`, `ray stop`): those
# also kill the engines and clusters of anyone else on the machine (another test run, a developer).

OWNER_VAR = "DOMAIN_LLM_TEST_OWNER"


def owner_token() -> str:
    """A value of OWNER_VAR unique to one fixture of this test run: put it in the environment of the
    commands the fixture starts, then find and stop their processes with it."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def owned_processes(token: str) -> list:
    """Live processes started with OWNER_VAR=token in their environment, and all their descendants.

    A command started with the variable passes it to everything it starts: the daemons of a cluster
    its `ray start` launched (which outlive the command), Ray workers and Serve replicas (started by
    that raylet), and the vLLM engine processes of a replica, also once a hard stop orphaned them.
    Descendants add the few that overwrite their environment with a long process title (Ray's
    dashboard modules and agents)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get(OWNER_VAR) == token:
                found[p.pid] = p
        except psutil.Error:  # exited meanwhile, or another user's process
            continue
    for p in list(found.values()):
        try:
            for child in p.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue

    def running(p) -> bool:  # not exited (a zombie has: nothing left to stop)
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    return sorted(filter(running, found.values()), key=lambda p: p.pid)


def stop_owned(token: str, grace_s: float = 10) -> list[int]:
    """Stop the processes of :func:`owned_processes` as `ray stop` stops a cluster, but only these:
    SIGTERM to raylets, then to everything else, then to GCS servers, each group SIGKILLed after
    ``grace_s``. Forgets the cluster address `ray start` recorded, when it is one of these clusters'.
    Returns the pids it found."""
    import psutil

    def name(p):
        try:
            return p.name()
        except psutil.Error:
            return ""

    procs = owned_processes(token)
    addresses = [a for a in map(_gcs_address, procs) if a]
    groups = [[p for p in procs if name(p) == "raylet"],
              [p for p in procs if name(p) not in ("raylet", "gcs_server")],
              [p for p in procs if name(p) == "gcs_server"]]
    for group in [*groups, owned_processes(token)]:  # last: anything started meanwhile
        for p in group:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(group, timeout=grace_s)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
    for address_file, address in addresses:
        # What `ray stop` does: a later `ray status` or `ray.init()` would try the dead address.
        with contextlib.suppress(OSError):
            if address_file.read_text().strip() == address:
                address_file.unlink()
    return [p.pid for p in procs]


def _gcs_address(proc) -> tuple[Path, str] | None:
    """(ray_current_cluster file, GCS address) of a gcs_server process; None for other processes."""
    import psutil

    try:
        if proc.name() != "gcs_server":
            return None
        args = dict(a[2:].split("=", 1) for a in proc.cmdline() if a.startswith("--") and "=" in a)
    except psutil.Error:
        return None
    if not {"session-dir", "node-ip-address", "gcs_server_port"} <= args.keys():
        return None
    return (Path(args["session-dir"]).parent / "ray_current_cluster",
            f"{args['node-ip-address']}:{args['gcs_server_port']}")


@contextlib.contextmanager
def web_server(app):
    """Serve an ASGI app with uvicorn in a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the web server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


def page_wait(driver, timeout: float = 15):
    """A WebDriverWait for polling a page that re-renders or navigates.

    While a page replaces its nodes, Chromium can answer a read with a generic "unhandled inspector
    error" (node not in the document) instead of a stale-element error; a poll retries on any
    WebDriver error, and a real failure still ends as a timeout naming the condition.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,))


def text_of(driver, element_id: str) -> str:
    """An element's text read in one script call (no element handle that can go stale); '' if absent."""
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent.trim() : '';", element_id)


@pytest.fixture
def browser(tmp_path):
    """Debian's headless Chromium through Selenium (skipped where chromium-driver is missing)."""
    if not CHROMEDRIVER.exists():
        pytest.skip(f"{CHROMEDRIVER} is missing (install Debian's chromium-driver to run browser tests)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach the network
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
