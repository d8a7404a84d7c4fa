"""Model output parsing and repair: JSON, labelled lines, loops, garbage; evidence located in the chunk."""

import pytest

from app.data.generate import ParseError, locate_evidence, pairs_from_output, parse_pairs
from app.endpoint import response_text

CHUNK = {"chunk_id": "abc-0001", "doc_id": "abc", "doc_path": "lib/os.md", "doc_title": "os", "section": "os > Files",
         "topic": "os-services",
         "text": "The os module provides a portable way of using operating system dependent functionality. "
                 "To read or write a file see open(). Use os.getcwd() to get the current working directory."}


def test_json_list_with_evidence():
    out = '[{"question": "What does os.getcwd() return?", "answer": "The current working directory.", ' \
          '"evidence": "Use os.getcwd() to get the current working directory."}]'
    [p] = parse_pairs(out)
    assert p == {"question": "What does os.getcwd() return?", "answer": "The current working directory.",
                 "evidence": "Use os.getcwd() to get the current working directory."}


def test_json_inside_prose_and_fences_is_repaired():
    out = 'Sure! Here you go:\n```json\n{"pairs": [{"Question": "What is os?", "Answer": "A module."}]}\n```\nHope it helps'
    assert parse_pairs(out)[0]["question"] == "What is os?"


def test_labelled_lines_with_a_loop_are_deduplicated():
    out = ("Question: What is the purpose of the os module?\n\nAnswer: It provides a portable way of using operating "
           "system dependent functionality.\n\nQuestion: What is the purpose of the os module?\n\nAnswer: It provides")
    pairs = parse_pairs(out)
    assert len(pairs) == 1 and pairs[0]["answer"].startswith("It provides a portable way")


def test_numbered_bold_labels():
    out = "1. **Question:** How do you get the working directory?\n**Answer:** Call os.getcwd()."
    assert parse_pairs(out)[0]["answer"] == "Call os.getcwd()."


@pytest.mark.parametrize("bad", ["", "   ", "The passage provides a concise explanation.", '{"question": 3}',
                                 "Question: only a question, never answered?"])
def test_garbage_raises_parse_error(bad):
    with pytest.raises(ParseError):
        parse_pairs(bad)


def test_evidence_claimed_verbatim_or_matched():
    ev, how = locate_evidence(CHUNK["text"], "x", "Use  os.getcwd() to get\nthe current working directory.")
    assert how == "model" and ev in CHUNK["text"]
    ev, how = locate_evidence(CHUNK["text"], "It gives the current working directory.")
    assert how == "matched" and "getcwd" in ev and ev in CHUNK["text"]


def test_rows_for_errors_and_malformed_output_never_raise():
    [row] = pairs_from_output(CHUNK, "", "endpoint error: {'status': 500}", "llm:m")
    assert row["parse_error"].startswith("request failed: endpoint error") and row["question"] == ""
    [row] = pairs_from_output(CHUNK, "I'm ready to help. What's your next question?", "", "llm:m")
    assert row["parse_error"].startswith("malformed model output: no question/answer")
    [row] = pairs_from_output(CHUNK, "Question: What does os.getcwd() return?\nAnswer: The current working directory.",
                              "", "llm:m")
    assert row["parse_error"] == "" and row["generator"] == "llm" and row["context"] == CHUNK["text"]
    assert row["evidence"] in CHUNK["text"] and len(row["pair_id"]) == 16


def test_response_text_shapes():
    assert response_text({"choices": [{"message": {"content": "hi"}}]}) == ("hi", "")
    assert response_text({"error": {"status": 502, "body": "<html>"}})[1].startswith("endpoint error")
    assert "unexpected response shape" in response_text({"foo": 1})[1]
    assert response_text(None)[1].startswith("no response body")


# -- answer-first generation ----------------------------------------------------------------------

from app.data.config import GenerationConfig
from app.data.generate import (answer_passages, parse_question, parse_questions, plan_requests,  # noqa: E402
                               question_guide, question_row, question_rows)

MANUAL = """# git-commit(1)

## DESCRIPTION

A commit is a snapshot of the index together with the author and the log message. This is useful.

It records that. The `--amend` option replaces the tip of the current branch by creating a new commit.

```
$ git commit --amend --no-edit
```

- a list item that is a long sentence which says the commit is recorded in the repository here.
"""


def test_answer_passages_are_whole_statements_from_prose_only():
    found = answer_passages(MANUAL, limit=5)
    # The `--amend` sentence is left out: the statement extractor asks its question by rule.
    assert found == ["A commit is a snapshot of the index together with the author and the log message."]
    assert all(" ".join(a.split()) in " ".join(MANUAL.split()) for a in found)
    # Sentences that need the one before ("This is useful.", "It records that."), code and lists are left out.
    text = MANUAL.replace("The `--amend` option replaces", "Amending with `--amend` replaces")
    assert answer_passages(text, limit=1, guided=False) == [
        "Amending with `--amend` replaces the tip of the current branch by creating a new commit."]  # names code: preferred
    # Guided, a sentence needs a subject or condition to anchor its question on.
    unanchored = MANUAL.replace("This is useful.", "Defaults to `diff.submodule` or the short format if unset here.")
    assert answer_passages(unanchored, limit=5) == found
    assert len(answer_passages(unanchored, limit=5, guided=False)) == 2
    assert question_guide("Defaults to `diff.submodule` or the short format if the option is unset.") == ""
    assert answer_passages("```\nThe code is a fenced block that is long enough to count here.\n```", 3) == []


def test_parse_question_takes_the_first_question():
    assert parse_question("What does `--amend` do?") == "What does `--amend` do?"
    assert parse_question('{"question": "How is a commit created?"}') == "How is a commit created?"
    assert parse_question("Question: What is the index in Git?\nAnswer: x") == "What is the index in Git?"
    for bad in ("", "   ", "I am ready to help."):
        with pytest.raises(ParseError):
            parse_question(bad)


def test_planned_requests_are_guided_and_keyed_by_what_decides_the_answer():
    chunk = {"chunk_id": "c-0001", "doc_id": "c", "doc_path": "git-commit.md", "doc_title": "git-commit(1)",
             "section": "DESCRIPTION", "topic": "t0", "text": MANUAL}
    g = GenerationConfig()
    reqs = plan_requests(chunk, g, "m")
    assert len(reqs) == 1 and [r["answer"] for r in reqs] == answer_passages(MANUAL, 3)
    import json
    body = json.loads(reqs[0]["body"])
    assert body["structured_outputs"] == {"regex": question_guide(reqs[0]["answer"])}
    assert "about git-commit " in body["messages"][0]["content"]
    assert plan_requests(chunk, g, "m") == reqs  # stable keys: the cache finds them again
    assert plan_requests(chunk, g, "other")[0]["key"] != reqs[0]["key"]
    assert "structured_outputs" not in json.loads(plan_requests(chunk, GenerationConfig(guided=False), "m")[0]["body"])
    pairs = json.loads(plan_requests(chunk, GenerationConfig(mode="pairs", prompt_style="json"), "m")[0]["body"])
    assert pairs["response_format"]["type"] == "json_schema"

    row = question_row({**chunk, "answer": reqs[0]["answer"]}, "What does the `--amend` option of git commit do?", "", "llm:m")
    assert row["generator"] == "llm_question" and row["answer"] == row["evidence"] == reqs[0]["answer"]
    assert row["question"].startswith("What does") and not row["parse_error"]
    failed = question_row({**chunk, "answer": reqs[0]["answer"]}, "", "timed out after 1 s (3 tries)", "llm:m")
    assert failed["parse_error"] == "request failed: timed out after 1 s (3 tries)" and failed["question"] == ""
    bad = question_row({**chunk, "answer": reqs[0]["answer"]}, "Sure.", "", "llm:m")
    assert bad["parse_error"].startswith("malformed model output")


@pytest.mark.parametrize("answer,good,bad", [
    ("The `--amend` option replaces the tip of the current branch.",
     "What does the `--amend` option replace?", "What does the `--amend` option do to branches in Git?"),
    ("A `ref_record` describes a single reference.", "What does a `ref_record` describe?", "What is a record?"),
    ("The index is a binary file that records the staged content.", "What is the index?", "What is Git?"),
    ("If set to true, makes `git repack` act as if `--pack-kept-objects` was passed.",
     "What happens if set to true?", "What is the answer to this question?"),
])
def test_the_question_guide_anchors_on_what_the_answer_is_about(answer, good, bad):
    import re
    pattern = question_guide(answer)
    assert re.fullmatch(pattern, good), pattern
    assert not re.fullmatch(pattern, bad), pattern


def test_several_candidate_questions_become_several_rows():
    chunk = {"chunk_id": "c-0001", "doc_id": "c", "doc_path": "x.md", "doc_title": "x", "section": "", "topic": "t",
             "text": MANUAL, "answer": "The `--amend` option replaces the tip of the current branch by creating a new commit."}
    assert parse_questions("What does `--amend` do?\nWhat does `--amend` do?\nHow is the tip replaced?") == [
        "What does `--amend` do?", "How is the tip replaced?"]
    rows = question_rows(chunk, "What does `--amend` do?\nHow is the tip replaced?", "", "llm:m")
    assert [r["question"] for r in rows] == ["What does `--amend` do?", "How is the tip replaced?"]
    assert len({r["pair_id"] for r in rows}) == 2


@pytest.fixture
def slow_endpoint():
    """A real local chat endpoint: {"sleep": s} answers after s seconds, {"fail": true} with HTTP 400."""
    import json as _json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("fail"):
                self.send_response(400)
                self.end_headers()
                self.wfile.write(b'{"error": "bad"}')
                return
            time.sleep(body.get("sleep", 0))
            out = _json.dumps({"choices": [{"message": {"content": "What is it for?"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            try:
                self.wfile.write(out)
            except BrokenPipeError:  # the client gave up at its deadline
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1/chat/completions"
    server.shutdown()


def test_the_requester_stops_at_its_deadline_and_turns_failures_into_rows(slow_endpoint):
    """Requests in flight at the deadline are cut (an error row), requests not yet sent come back as
    not asked, and nothing raises."""
    import json as _json
    import time

    from app.endpoint import ChatRequester

    bodies = [_json.dumps({"sleep": 0}), _json.dumps({"fail": True}), _json.dumps({"sleep": 5}), _json.dumps({"sleep": 0})]
    started = time.time()
    requester = ChatRequester(slow_endpoint, None, timeout_s=60, max_retries=0, retry_wait_s=0.1, inflight=1,
                              deadline=time.time() + 1.5)
    out = requester({"key": list("abcd"), "body": bodies})
    took = time.time() - started
    assert took < 4, took  # the 5 s request was cut at the deadline
    assert list(out["output"]) == ["What is it for?", "", "", ""]
    assert "HTTP 400" in out["error"][1] and out["error"][2].startswith("timed out after")
    assert out["error"][3] == ChatRequester.LATE  # its turn came after the deadline: never sent


def test_the_requester_keeps_to_its_rate_limit(slow_endpoint):
    """data.generation.qps: six instant requests, eight in flight allowed, at most 4 per second."""
    import json as _json
    import time

    from app.endpoint import ChatRequester

    body = _json.dumps({"sleep": 0})
    for qps, at_least in ((None, 0.0), (4.0, 5 / 4)):
        started = time.time()
        out = ChatRequester(slow_endpoint, None, timeout_s=30, max_retries=0, retry_wait_s=0.1, inflight=8,
                            qps=qps)({"key": list("abcdef"), "body": [body] * 6})
        took = time.time() - started
        assert list(out["error"]) == [""] * 6
        assert took >= at_least and (qps or took < 1.0), (qps, took)
