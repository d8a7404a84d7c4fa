"""Quality checks with the real all-MiniLM-L6-v2: each rejection names its rule."""

import numpy as np
import pandas as pd

from app.data.config import QualityConfig
from app.data.quality import deduplicate, form_problems, score_frame

Q = QualityConfig()
CONTEXT = ("The heapq module provides an implementation of the heap queue algorithm, also known as the priority "
           "queue algorithm. heapq.heappush(heap, item) pushes the value item onto the heap, maintaining the heap "
           "invariant. heapq.heappop(heap) pops and returns the smallest item from the heap.")


def row(pid, q, a, gen="llm", ev="", perr=""):
    return {"pair_id": pid, "question": q, "answer": a, "evidence": ev, "context": CONTEXT, "generator": gen,
            "parse_error": perr}


def test_form_rules_name_the_problem():
    assert form_problems("What does heapq.heappop() return?", "The smallest item from the heap.", Q) == []
    assert "question does not end with '?'" in form_problems("Tell me about heaps", "A heap is a tree.", Q)
    assert any("refers to the source text" in p for p in form_problems("What does the passage say about heaps?", "Heaps are trees.", Q))
    assert any("unresolved pronoun" in p for p in form_problems("What does it return?", "The smallest item.", Q))
    assert any("contains its answer" in p for p in
               form_problems("Does heappop return the smallest item from the heap?", "The smallest item from the heap.", Q))
    assert any("degenerate" in p for p in form_problems("What is a heap queue?", "a heap a heap a heap a heap a heap a heap a heap", Q))


def test_scores_accept_grounded_and_reject_invented_answers():
    df = score_frame(pd.DataFrame([
        row("good", "What does heapq.heappop() return?", "It pops and returns the smallest item from the heap."),
        row("made-up", "What does heapq.heappop() return?", "A sorted list of every prime number below one million."),
        row("off-topic", "What is the capital of Australia?", "It pops and returns the smallest item from the heap."),
        row("broken", "", "", perr="malformed model output: no question/answer found in output"),
    ]), Q).set_index("pair_id")
    assert df.loc["good", "accepted"], df.loc["good", "reject_reason"]
    assert "not grounded" in df.loc["made-up", "reject_reason"]
    assert "question about terms the chunk does not contain" in df.loc["off-topic", "reject_reason"]
    assert df.loc["broken", "reject_reason"].startswith("malformed model output")
    assert df.loc["good", "score_semantic_grounding"] > df.loc["made-up", "score_semantic_grounding"]


def test_deduplicate_exact_and_near_keeps_the_preferred_copy():
    df = score_frame(pd.DataFrame([
        row("a", "What does heapq.heappush() do?", "It pushes the value item onto the heap.", gen="llm"),
        row("b", "What does heapq.heappush() do ?", "Pushes the value item onto the heap.", gen="definition"),
        row("c", "What does the heapq.heappush() function do?", "It pushes the value item onto the heap.", gen="llm"),
        row("d", "What does heapq.heappop() return?", "It pops and returns the smallest item from the heap."),
    ]), Q)
    out = deduplicate(df, Q).set_index("pair_id")
    assert out.loc["b", "accepted"] and out.loc["d", "accepted"]
    assert out.loc["a", "reject_reason"] == "exact duplicate of b"
    assert out.loc["c", "reject_reason"].startswith("near duplicate of")
    assert isinstance(out.loc["d", "q_embedding"], np.ndarray)


def test_a_model_written_question_must_point_at_its_own_answer():
    """The round trip: of the chunk's sentences, the answer's must be the closest to the question."""
    import pandas as pd

    from app.data.config import QualityConfig
    from app.data.quality import score_frame

    context = ("The `--amend` option replaces the tip of the current branch by creating a new commit. "
               "The `--dry-run` option shows what would be committed without committing anything.")
    answer = "The `--amend` option replaces the tip of the current branch by creating a new commit."
    rows = [{"pair_id": str(i), "question": q, "answer": answer, "evidence": answer, "context": context,
             "generator": gen, "parse_error": ""} for i, (q, gen) in enumerate([
                 ("What does the `--amend` option of git commit do?", "llm_question"),
                 ("What does the `--dry-run` option of git commit show?", "llm_question"),
                 ("What does the `--dry-run` option of git commit show?", "definition")])]
    scored = score_frame(pd.DataFrame(rows), QualityConfig())
    assert scored.loc[0, "accepted"] and scored.loc[0, "score_answer_rank"] == 1
    assert not scored.loc[1, "accepted"] and "points at another sentence" in scored.loc[1, "reject_reason"]
    # Extracted pairs are not held to it (their question comes from the document's own structure).
    assert "points at another sentence" not in scored.loc[2, "reject_reason"]
