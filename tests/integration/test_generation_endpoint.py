"""LLM generation through the HTTP request actors against an endpoint that misbehaves.

A real HTTP server on localhost answers each prompt in one of several ways (in turn, by the order
in which prompts first arrive, so 14 prompts get each answer twice): a good completion, a completion with no QA pair in it, a JSON 400 error, an HTML 500 page,
a 200 with a non-JSON body, an empty 200, and a 503 that succeeds on retry. The build must finish,
record every failure as a rejected row with its reason, and keep the good pairs.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from app.data.corpus import export_stdlib_docs
from tests.conftest import free_port, run_cli, summary_json

pytestmark = pytest.mark.integration

MODES = ["good", "garbage", "json_400", "html_500", "not_json", "empty", "retry_503", "timeout"]
TIMEOUT_S = 1.5


ASSIGNED: dict[str, str] = {}


def mode_of(prompt: str) -> str:
    return ASSIGNED.setdefault(prompt, MODES[len(ASSIGNED) % len(MODES)])


def good_completion(prompt: str) -> str:
    """A pair that passes the form checks whichever chunk it is about (the good answer must not be
    lost to quality: which chunks get it depends on arrival order). Distinct words only, so neither
    the question nor the answer repeats itself, whatever the chunk's length or headings."""
    text = prompt.split("\n\nWrite ")[0]
    subject = list(dict.fromkeys(w.lower() for w in re.findall(r"[A-Za-z]{4,}", text)))[:6]
    answer = " ".join(list(dict.fromkeys(text.split()))[-40:])
    return f"Question: What does the documentation say about {' '.join(subject)}?\nAnswer: {answer}"


class Endpoint(BaseHTTPRequestHandler):
    recovered = False  # the timing-out prompts answer once this is set (the endpoint came back)
    seen: dict[str, int] = {}
    answered: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def send(self, status, body: bytes, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up (a timing-out prompt): nothing to tell it
            pass

    def do_GET(self):
        self.send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.lock:
            mode = mode_of(prompt)
            self.seen[prompt] = self.seen.get(prompt, 0) + 1
            first = self.seen[prompt] == 1
            self.answered.append(mode)

        def completion(text):
            return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()

        if mode == "timeout" and not Endpoint.recovered:
            time.sleep(TIMEOUT_S * 2)  # past the client's timeout: every try of this prompt times out
            return self.send(504, b"too late", "text/plain")
        if mode == "good" or (mode == "retry_503" and not first) or mode == "timeout":
            self.send(200, completion(good_completion(prompt)))
        elif mode == "retry_503":
            self.send(503, b"busy", "text/plain")
        elif mode == "garbage":
            self.send(200, completion("I'm ready to help. What's your next question?"))
        elif mode == "json_400":
            self.send(400, json.dumps({"error": {"message": "prompt too long"}}).encode())
        elif mode == "html_500":
            self.send(500, b"<html><body>Internal Server Error</body></html>", "text/html")
        elif mode == "not_json":
            self.send(200, b'{"choices": [ truncated', "application/json")
        else:
            self.send(200, b"")


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Endpoint.seen.clear()
    Endpoint.answered.clear()
    Endpoint.recovered = False
    ASSIGNED.clear()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def flaky_sets(endpoint, tmp_path, *extra):
    return ["--set", "data.name=flaky", "--set", "data.generation.backend=http", "--set", f"data.generation.url={endpoint}",
            "--set", "data.generation.model=fake-model", "--set", "data.generation.max_chunks=16",
            "--set", "data.generation.mode=pairs", "--set", "data.generation.guided=false",
            "--set", "data.generation.max_retries=2", "--set", "data.generation.retry_wait_s=0.2",
            "--set", f"data.generation.timeout_s={TIMEOUT_S}",
            "--set", "data.target_pairs=1", "--set", "data.min_test_pairs=0", "--set", "data.extract=[]",
            "--set", "data.quality.min_lexical_grounding=0", "--set", "data.quality.min_semantic_grounding=-1",
            "--set", "data.quality.min_relevance=-1", "--set", "data.quality.min_question_grounding=0",
            "--set", "data.quality.min_model_question_relevance=-1", "--set", "data.quality.question_points_at_answer=false",
            "--set", f"data.review_db=sqlite:///{tmp_path / 'review.db'}", *extra]


@pytest.fixture
def docs(tmp_path):
    docs = tmp_path / "docs"
    export_stdlib_docs(docs, progress=lambda _: None, modules=["heapq", "bisect", "textwrap", "json", "shutil", "glob", "fnmatch"],
                       topics=["if", "while", "for", "try"])
    return docs


def test_bad_responses_become_rejected_rows_not_a_failed_job(endpoint, docs, tmp_path, mlflow_uri, stored_model):
    proc = run_cli("app", "dataset", "build", "--docs", str(docs), *flaky_sets(endpoint, tmp_path),
                   env={"RAY_ADDRESS": ""}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = Path(summary_json(proc.stdout)["path"])
    manifest = json.loads((out / "manifest.json").read_text())
    modes = {mode_of(p) for p in Endpoint.seen}
    assert len(Endpoint.seen) == manifest["generation"]["requests"] == 16
    assert modes == set(MODES)
    failed = sum(mode_of(p) in ("json_400", "html_500", "not_json", "empty", "timeout") for p in Endpoint.seen)
    assert manifest["generation"]["request_errors"] == failed
    rejected = pd.read_json(out / "rejected.jsonl", lines=True)
    reasons = " | ".join(rejected["reject_reason"])
    assert "400" in reasons and "prompt too long" in reasons
    assert "Internal Server Error" in reasons
    assert "no question/answer found" in reasons
    assert f"request failed: timed out after {TIMEOUT_S:g} s (3 tries)" in reasons
    kept = pd.concat(pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test"))
    good = sum(mode_of(p) in ("good", "retry_503") for p in Endpoint.seen)
    lost = rejected[rejected["question"].fillna("").str.startswith("What does the documentation say")]
    assert good and len(kept) == good and kept["question"].str.startswith("What does the documentation say").all(), \
        lost[["question", "answer", "reject_reason"]].to_dict("records")
    assert "request failed: endpoint error" in reasons
    # Each 503 was retried once and then answered; each 500 and each timing-out prompt was tried three times.
    tries = {"retry_503": 2, "timeout": 3, "html_500": 3}
    assert all(n == tries.get(mode_of(p), 1) for p, n in Endpoint.seen.items())

    # The next build with the same dataset name reuses every answer it received (kept as they
    # arrived) and asks the endpoint again only for what failed; now that it answers, those pairs join.
    before = dict(Endpoint.seen)
    Endpoint.recovered = True
    proc = run_cli("app", "dataset", "build", "--docs", str(docs), *flaky_sets(endpoint, tmp_path),
                   env={"RAY_ADDRESS": ""}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = {p: n - before.get(p, 0) for p, n in Endpoint.seen.items() if n > before.get(p, 0)}
    assert again and {mode_of(p) for p in again} <= {"json_400", "html_500", "not_json", "empty", "timeout"}
    assert not any(mode_of(p) in ("good", "garbage", "retry_503") for p in again)
    manifest = json.loads((Path(summary_json(proc.stdout)["path"]) / "manifest.json").read_text())
    assert manifest["generation"]["cached"] == 16 - failed
    assert manifest["quality"]["llm"]["accepted"] == good + sum(mode_of(p) == "timeout" for p in Endpoint.seen)


def test_an_unreachable_target_fails_after_the_first_wave_with_the_estimate(endpoint, docs, tmp_path, mlflow_uri,
                                                                           stored_model):
    """A corpus that cannot reach data.target_pairs fails once the first requests show the yield,
    naming the estimate and the settings that change it, and leaves what it got in the cache."""
    sets = flaky_sets(endpoint, tmp_path, "--set", "data.name=unreachable", "--set", "data.target_pairs=5000",
                      "--set", "data.generation.max_chunks=null",
                      "--set", "data.generation.estimate_requests=16", "--set", "data.generation.min_chunks=0")
    started = time.time()
    proc = run_cli("app", "dataset", "build", "--docs", str(docs), *sets, env={"RAY_ADDRESS": ""}, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "cannot reach data.target_pairs=5000" in out, out[-3000:]
    assert "the estimate is" in out and "data.generation.answers_per_chunk" in out and "Traceback" not in out
    assert len(Endpoint.seen) == 16  # one wave, then the verdict: not every chunk of the corpus
    assert time.time() - started < 300


def test_the_good_completion_passes_the_form_checks_on_every_chunk(docs, stored_model):
    """The fake endpoint's good answer must survive quality whichever chunk it lands on (CI once lost
    one: the first version quoted prompt[300:600], empty for a short chunk, and repeated headings)."""
    from app.config import ExperimentConfig
    from app.data.generate import build_messages, parse_pairs
    from app.data.ingest import list_documents, process_document
    from app.data.quality import form_problems, normalize_text

    d = ExperimentConfig().data
    files, _ = list_documents(docs, d.extensions, None, ())
    questions = []
    for f in files:
        doc = process_document(f, tokenizer_file=str(stored_model.path / "tokenizer.json"), chunk_tokens=d.chunk_tokens,
                               chunk_overlap=d.chunk_overlap, min_chunk_tokens=d.min_chunk_tokens, extract_kinds=[])
        for chunk in doc["chunks"]:
            prompt = build_messages(chunk, d.generation.pairs_per_chunk, d.generation.prompt_style)[-1]["content"]
            (pair,) = parse_pairs(good_completion(prompt))
            assert form_problems(pair["question"], pair["answer"], d.quality) == [], (chunk["chunk_id"], pair)
            questions.append(normalize_text(pair["question"]))
    assert len(questions) >= 16 and len(set(questions)) == len(questions)
