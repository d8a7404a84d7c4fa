"""Locust load on an OpenAI-compatible chat endpoint: streamed completions, LLM latency as Locust metrics.

Run it as it is (the web UI at http://127.0.0.1:8089, or headless):

    locust -f app/bench/locustfile.py --host http://127.0.0.1:8000 --model smollm2-135m-instruct
    locust -f app/bench/locustfile.py --host http://127.0.0.1:8000 --model assistant \\
        --headless --shape step --shape-users 8 --step-users 2 --step-seconds 30 --csv out/run --html out/run.html

``app bench load`` runs it headless with the config's profile and writes the domain prompts first.

Every request is one streamed chat completion (``FastHttpUser``; ``stream_options.include_usage`` for
the token count) and reports four entries, with the definitions of vLLM's serving benchmark:

- ``POST chat`` (type POST): end-to-end latency in ms; its "size" column is the output tokens, so
  Locust's average content size is the mean output length and the failures are HTTP errors,
  timeouts and streams that ended without content.
- ``LLM TTFT``: time to the first streamed content, ms.
- ``LLM TPOT``: (E2E - TTFT) / (output tokens - 1), ms (requests with more than one token).
- ``LLM ITL``: every gap between consecutive content chunks, ms.

Prompts: ``--prompts FILE`` (JSONL of ``{"messages": [...]}``, as ``app bench load`` writes from the
test split), else ``$DOMAIN_LLM_HOME/bench/prompts.jsonl`` (default home ``~/.domain_llm``) when it
exists, else questions over the Python reference (offline). The key: the variable ``--api-key-env``
names (default ``OPENAI_API_KEY``); never a command-line value. Only this machine is loaded unless
``--allow-remote`` is given. A profile (``--shape``) sets the users over time as a LoadTestShape;
``--shape manual`` follows ``-u``/``-r``/``-t`` (or the web UI's fields).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from locust import FastHttpUser, LoadTestShape, constant, events, task

# `locust -f app/bench/locustfile.py` puts only this file's folder on the path: add the project's.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from app.sections import is_loopback  # noqa: E402  (foundation module: pydantic only)

log = logging.getLogger("domain_llm.locust")
PROFILES = ("manual", "steady", "step", "stress", "soak")
METRIC = "LLM"  # request_type of the TTFT / TPOT / ITL entries
_PROMPTS: list[list[dict]] = []


def default_prompts_file() -> Path:
    return Path(os.environ.get("DOMAIN_LLM_HOME") or "~/.domain_llm").expanduser() / "bench" / "prompts.jsonl"


def load_prompts(path: str | None) -> list[list[dict]]:
    """Chat message lists to send: the named JSONL, the home's bench prompts, or the offline fallback."""
    file = Path(path).expanduser() if path else default_prompts_file()
    if file.is_file():
        out = []
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"--prompts {file}: line {n} is not a JSON object with 'messages'") from None
            out.append(messages)
        if not out:
            raise SystemExit(f"--prompts {file} holds no prompt")
        return out
    if path:
        raise SystemExit(f"--prompts {file} does not exist")
    from app.serving.loadgen import benchmark_prompts

    log.warning("no prompts file (%s): using questions over the Python reference", file)
    return [[{"role": "user", "content": p}] for p in benchmark_prompts()]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    # Locust's own parser: only it takes include_in_web_ui (argument groups do not).
    parser.add_argument("--model", default=os.environ.get("BENCH_MODEL", ""), include_in_web_ui=True,
                       help="Model id to ask for (a served model, or the A/B experiment's public name).")
    parser.add_argument("--prompts", default="", help="JSONL of {\"messages\": [...]} (default: "
                       "$DOMAIN_LLM_HOME/bench/prompts.jsonl, else offline questions).")
    parser.add_argument("--max-tokens", type=int, default=64, include_in_web_ui=True, help="Output tokens per request.")
    parser.add_argument("--ignore-eos", default="true", choices=["true", "false"], include_in_web_ui=True,
                       help="Fixed output length (vLLM's benchmark does this: equal work per request).")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="Environment variable holding the API key.")
    parser.add_argument("--unit-header", default="x-user-id", help="Header carrying each simulated user's id "
                       "(sticky A/B assignment).")
    parser.add_argument("--allow-remote", action="store_true", default=False,
                       help="Allow a --host that is not this machine.")
    parser.add_argument("--shape", default="manual", choices=PROFILES, help="Load shape (see the module's doc).")
    parser.add_argument("--shape-users", type=int, default=4, help="Peak / held users of the profile.")
    parser.add_argument("--shape-spawn-rate", type=float, default=2.0, help="Users started per second.")
    parser.add_argument("--shape-seconds", type=float, default=60.0, help="How long the load is held.")
    parser.add_argument("--step-users", type=int, default=2, help="step: users added per step.")
    parser.add_argument("--step-seconds", type=float, default=30.0, help="step: seconds per step.")


@events.init.add_listener
def _check(environment, **_kw) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    host = opts.host or ""
    if host and not opts.allow_remote and not is_loopback(urlsplit(host).hostname or ""):
        sys.stderr.write(f"--host {host} is not this machine: pass --allow-remote to load another host\n")
        sys.exit(2)
    if not opts.model:
        sys.stderr.write("--model is required (or BENCH_MODEL): the model id to ask for\n")
        sys.exit(2)
    _PROMPTS[:] = load_prompts(opts.prompts or None)


@events.test_start.add_listener
def _check_host(environment, **_kw) -> None:
    # The web UI's host field is only known here.
    opts = environment.parsed_options
    host = environment.host or ""
    if opts is not None and not opts.allow_remote and not is_loopback(urlsplit(host).hostname or ""):
        log.error("host %s is not this machine: pass --allow-remote to load another host", host)
        if environment.runner is not None:
            environment.runner.quit()


def _fire(environment, name: str, ms: float, length: int = 0) -> None:
    environment.events.request.fire(request_type=METRIC, name=name, response_time=ms, response_length=length,
                                    exception=None, context={})


class ChatUser(FastHttpUser):
    """A user asking one streamed question after another (no think time: a closed loop)."""

    wait_time = constant(0)
    network_timeout = 180.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.uid = f"locust-{uuid.uuid4().hex[:12]}"
        key = os.environ.get(opts.api_key_env, "") if opts.api_key_env else ""
        self.headers = {opts.unit_header: self.uid, **({"Authorization": f"Bearer {key}"} if key else {})}
        self.rng = random.Random(self.uid)

    @task
    def chat(self) -> None:
        opts = self.environment.parsed_options
        body = {"model": opts.model, "messages": self.rng.choice(_PROMPTS or [[{"role": "user", "content": "Hi"}]]),
                "max_tokens": opts.max_tokens, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}, "user": self.uid}
        if opts.ignore_eos == "true":
            body["ignore_eos"] = True
        start = time.perf_counter()
        ttft = None
        last = start
        gaps: list[float] = []
        tokens = 0
        with self.client.post("/v1/chat/completions", json=body, headers=self.headers, stream=True,
                              catch_response=True, name="chat") as resp:
            if resp.status_code != 200:
                text = resp.text if resp.status_code else str(getattr(resp, "error", ""))
                resp.failure(f"HTTP {resp.status_code}: {(text or '')[:200]}")
                return
            raw = resp._response  # geventhttpclient's response: readline() returns each line as it arrives
            try:
                while True:
                    line = raw.readline(b"\n")
                    if not line:
                        break
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens", 0) or 0
                    choices = chunk.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if ttft is None:
                            ttft = now - start
                        else:
                            gaps.append(now - last)
                        last = now
            except Exception as exc:  # noqa: BLE001 - a broken stream is a failed request, with its reason
                resp.failure(f"stream broken: {type(exc).__name__}: {exc}"[:300])
                return
            e2e = time.perf_counter() - start
            resp.request_meta["response_time"] = e2e * 1000
            resp.request_meta["response_length"] = tokens
            if ttft is None:
                resp.failure("stream ended without content")
                return
            resp.success()
        _fire(self.environment, "TTFT", ttft * 1000)
        if tokens > 1:
            _fire(self.environment, "TPOT", (e2e - ttft) / (tokens - 1) * 1000)
        for gap in gaps:
            _fire(self.environment, "ITL", gap * 1000)


class ProfileShape(LoadTestShape):
    """The users over time of ``--shape`` (manual: Locust's own -u/-r/-t, or the web UI's)."""

    use_common_options = True

    def tick(self):
        opts = self.runner.environment.parsed_options
        t = self.get_run_time()
        users, rate, hold = opts.shape_users, opts.shape_spawn_rate, opts.shape_seconds
        if opts.shape == "manual":
            if opts.run_time and t > opts.run_time:
                return None
            return (opts.num_users or 1, opts.spawn_rate or 1)
        if opts.shape in ("steady", "soak"):
            return (users, rate) if t < hold else None
        if opts.shape == "step":
            steps = -(-users // opts.step_users)
            k = int(t // opts.step_seconds)
            return (min(users, (k + 1) * opts.step_users), rate) if k < steps else None
        # stress: every user at once (as fast as they can be started), held
        return (users, max(rate, users)) if t < hold else None
