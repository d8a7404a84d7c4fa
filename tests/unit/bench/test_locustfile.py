"""The locustfile measured against a server whose timing is known: a small streaming HTTP server
(standard library, on loopback) that sends the first chat chunk after TTFT seconds and one more
every ITL seconds, as an OpenAI-compatible endpoint streams. Locust runs headless for real, as
`app bench load` runs it, and its CSV is parsed by the code the report uses."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.bench.load import LOCUSTFILE, headline, parse_failures, parse_stats

TTFT_S, ITL_S, TOKENS = 0.30, 0.05, 8


class Streamer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):  # Locust stopping drops the streams in flight
            pass

    def _answer(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Streamer.seen.append({"body": body, "auth": self.headers.get("Authorization"),
                              "unit": self.headers.get("x-user-id")})
        if body.get("model") != "m":
            payload = b'{"error": "no such model"}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(obj) -> None:
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        time.sleep(TTFT_S)
        for i in range(TOKENS):
            if i:
                time.sleep(ITL_S)
            send({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})
        send({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": TOKENS}})
        send(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Streamer)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def locust(tmp_path: Path, host: str, *extra: str, key: str | None = "secret", timeout: float = 120):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    env = {"PATH": str(Path(sys.executable).parent), "BENCH_TEST_KEY": key or "", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host, "--prompts",
           str(prompts), "--api-key-env", "BENCH_TEST_KEY", "--csv", str(tmp_path / "run"), "--only-summary",
           "--exit-code-on-error", "0", *extra]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def test_locust_reports_the_servers_known_ttft_tpot_and_itl(server, tmp_path):
    Streamer.seen.clear()
    proc = locust(tmp_path, server, "--model", "m", "--shape", "steady", "--shape-users", "2",
                  "--shape-spawn-rate", "10", "--shape-seconds", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = parse_stats(tmp_path / "run_stats.csv")
    e2e, ttft, tpot, itl = stats["e2e"], stats["ttft"], stats["tpot"], stats["itl"]
    assert e2e["failures"] == 0 and e2e["count"] >= 6, stats
    # The streamed chunks are read as they arrive (not in 1 KiB blocks): TTFT is the server's delay.
    assert ttft["mean_ms"] == pytest.approx(TTFT_S * 1000, abs=40), ttft
    assert tpot["mean_ms"] == pytest.approx(ITL_S * 1000, abs=12), tpot
    assert itl["mean_ms"] == pytest.approx(ITL_S * 1000, abs=12), itl
    assert itl["count"] == pytest.approx(ttft["count"] * (TOKENS - 1), abs=TOKENS)
    expected_e2e = (TTFT_S + (TOKENS - 1) * ITL_S) * 1000
    assert e2e["mean_ms"] == pytest.approx(expected_e2e, abs=60), e2e
    assert e2e["mean_output_tokens"] == TOKENS
    fig = headline(stats, wall_s=6.0)
    assert fig["completed"] == e2e["count"] and fig["p50_ttft_ms"] == ttft["p50_ms"]
    # The key came from the named variable as a bearer token; each user kept one sticky id.
    assert {s["auth"] for s in Streamer.seen} == {"Bearer secret"}
    units = {s["unit"] for s in Streamer.seen}
    assert len(units) == 2 and all(u.startswith("locust-") for u in units)
    assert all(s["body"]["stream"] and s["body"]["ignore_eos"] and s["body"]["max_tokens"] == 64 for s in Streamer.seen)


def test_http_errors_are_failures_with_their_reason(server, tmp_path):
    proc = locust(tmp_path, server, "--model", "not-served", "--shape", "steady", "--shape-users", "1",
                  "--shape-seconds", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = parse_stats(tmp_path / "run_stats.csv")
    assert stats["e2e"]["failures"] == stats["e2e"]["count"] > 0 and "ttft" not in stats
    failures = parse_failures(tmp_path / "run_failures.csv")
    assert failures and "HTTP 404" in failures[0]["error"] and "no such model" in failures[0]["error"]


def test_another_host_is_refused_without_allow_remote(tmp_path):
    proc = locust(tmp_path, "http://192.0.2.1:8000", "--model", "m", "--shape", "steady", timeout=60)
    assert proc.returncode == 2 and "not this machine" in proc.stderr and "--allow-remote" in proc.stderr


def test_the_step_profile_adds_users_per_step(server, tmp_path):
    proc = locust(tmp_path, server, "--model", "m", "--shape", "step", "--shape-users", "4", "--step-users", "2",
                  "--step-seconds", "3", "--shape-spawn-rate", "20", "--csv-full-history")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import csv

    with (tmp_path / "run_stats_history.csv").open() as f:
        users = [int(r["User Count"]) for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    assert 2 in users and 4 in users and max(users) == 4
    assert users.index(4) > users.index(2)


def test_the_locustfile_loads_from_any_directory_with_the_locust_command(tmp_path):
    """Users run `locust -f .../locustfile.py` from anywhere: the locustfile finds the project's modules
    itself (it refuses the remote host only after they are imported)."""
    out = subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless",
                          "--host", "http://192.0.2.1:8000", "--model", "m"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 2 and "not this machine" in out.stderr, out.stderr[-1000:]


def test_the_web_ui_runs_the_same_users(server, tmp_path):
    """Interactive mode (`locust -f` without --headless): the web UI's own API starts a swarm with the
    locustfile's options, and its stats list the LLM entries."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    env = {"PATH": str(Path(sys.executable).parent), "BENCH_TEST_KEY": "secret", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", server, "--web-host", "127.0.0.1",
           "--web-port", str(port), "--prompts", str(prompts), "--api-key-env", "BENCH_TEST_KEY", "--model", "m"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ui = f"http://127.0.0.1:{port}"
        for _ in range(60):
            try:
                if httpx.get(ui + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("the web UI did not start: " + proc.stdout.read() if proc.poll() is not None else "")
        started = httpx.post(ui + "/swarm", data={"user_count": 2, "spawn_rate": 10, "host": server, "model": "m"})
        assert started.status_code == 200 and started.json()["success"], started.text
        names: set[str] = set()
        for _ in range(40):
            time.sleep(0.5)
            names = {f"{s['method']} {s['name']}" for s in httpx.get(ui + "/stats/requests").json()["stats"]
                     if s.get("method")}
            if {"LLM TTFT", "LLM TPOT"} <= names:
                break
        assert {"POST chat", "LLM TTFT", "LLM TPOT", "LLM ITL"} <= names, names
        httpx.get(ui + "/stop")
    finally:
        proc.terminate()
        proc.wait(20)
