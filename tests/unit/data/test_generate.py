"""Model output parsing and repair: JSON, labelled lines, loops, garbage; evidence located in the chunk."""

import pytest

from app.data.generate import ParseError, locate_evidence, pairs_from_output, parse_pairs, response_text

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
