"""The review page in a real headless Chromium: log in, approve, edit, reject, and the edit surviving a rebuild."""

from __future__ import annotations

import pytest

from app.data.review import ReviewStore
from app.datasets import pair_id
from tests.conftest import page_wait, text_of, web_server

pytestmark = pytest.mark.integration

EDITED = "It returns a list of the file's lines, without reading it twice."
PASSWORD = "alice's long password"


def make_pair(i: int, answer: str | None = None) -> dict:
    question = f"What does reader number {i} return?"
    chunk = f"files#c{i}"
    return {
        "pair_id": pair_id("llm", chunk, question), "question": question,
        "answer": answer or f"Reader {i} returns the file's lines.",
        "evidence": f"returns the lines of the file <{i}>", "generator": "llm", "origin": "test-model",
        "doc_id": "files", "doc_path": "docs/files.md", "doc_title": "Files & streams", "section": "Reading",
        "chunk_id": chunk, "topic": "io",
        "context": f"Reader number {i} opens the path and returns the lines of the file <{i}> as a list.",
        "accepted": i != 3, "reject_reason": "" if i != 3 else "answer_not_supported",
    }


@pytest.fixture
def review_server(tmp_path):
    from app.data.review_web import create_app

    from app.accounts import AccountStore

    store = ReviewStore(f"sqlite:///{tmp_path / 'review' / 'review.db'}")
    accounts = AccountStore(f"sqlite:///{tmp_path / 'accounts.db'}")
    accounts.add("alice", PASSWORD, ["reviewer"])
    store.sync([make_pair(i) for i in range(4)], "stdlib-qa", "build-1")
    with web_server(create_app(store, accounts)) as base:
        yield store, base
    store.close()
    accounts.close()


def test_review_in_browser(review_server, browser):
    from selenium.webdriver.common.by import By

    store, base = review_server
    driver = browser
    wait = page_wait(driver)
    el = lambda id_: driver.find_element(By.ID, id_)  # noqa: E731

    def current_id() -> str:
        return wait.until(lambda d: text_of(d, "pair-id"))

    def wait_next(previous: str) -> str:
        return wait.until(lambda d: text_of(d, "pair-id") not in ("", previous) and text_of(d, "pair-id"))

    # Not logged in: the page sends the browser to the login form; a wrong password stays there.
    driver.get(base + "/")
    wait.until(lambda d: d.find_elements(By.ID, "password"))
    el("name").send_keys("alice")
    el("password").send_keys("not her password")
    el("login").click()
    wait.until(lambda d: "wrong password" in text_of(d, "login-msg"))
    assert store.stats()["events"] == 0
    el("name").clear()
    el("name").send_keys("alice")
    el("password").send_keys(PASSWORD)
    el("login").click()
    first = current_id()
    assert el("reviewer").text == "alice"
    assert store.get(first)["auto_accepted"] is True
    # The evidence span is highlighted and the text is escaped (the "<0>" stays text).
    assert "<" in el("context").find_element(By.TAG_NAME, "mark").text

    # Approve the first item: recorded as the logged-in account.
    el("approve").click()
    second = wait_next(first)
    assert "Approved" in el("status-msg").text

    # Edit the second item's answer and save it.
    el("answer").clear()
    el("answer").send_keys(EDITED)
    el("save").click()
    third = wait_next(second)

    # Reject the third with a note.
    el("note").send_keys("duplicates another pair")
    el("reject").click()
    fourth = wait_next(third)
    assert "Rejected" in el("status-msg").text
    assert len({first, second, third, fourth}) == 4
    assert store.get(fourth)["auto_accepted"] is False  # auto-rejected items come last

    # What the browser did is in the database.
    a, b, c = store.get(first), store.get(second), store.get(third)
    assert (a["status"], a["reviewer"]) == ("approved", "alice")
    assert (b["status"], b["reviewer"], b["answer"]) == ("edited", "alice", EDITED)
    assert b["orig_answer"] != EDITED
    assert (c["status"], c["reviewer"], c["note"]) == ("rejected", "alice", "duplicates another pair")
    [ev] = store.history(second)
    assert (ev["action"], ev["reviewer"], ev["answer_after"]) == ("edit", "alice", EDITED)
    assert [e["action"] for e in store.history(first)] == ["approve"]
    assert [e["action"] for e in store.history(third)] == ["reject"]
    assert store.get(fourth)["status"] == "pending"

    # A rebuild regenerates every answer: the reviewer's edit must survive it.
    counts = store.sync([make_pair(i, answer=f"Regenerated answer {i}.") for i in range(4)], "stdlib-qa", "build-2")
    assert counts == {"new": 0, "refreshed": 1, "kept_reviewed": 3}
    driver.get(f"{base}/item/{second}")
    wait.until(lambda d: text_of(d, "pair-id") == second)
    assert el("answer").get_property("value") == EDITED
    assert el("item-status").text == "edited"
    history = el("history").text
    assert "alice" in history and "edit" in history
