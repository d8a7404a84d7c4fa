from app.ab.quality import groundedness, reference_free, score_rows
from app.eval.metrics import DomainRule


def test_reference_free_scores():
    assert reference_free("", None)["empty_or_refusal"] is True
    assert reference_free("I'm sorry, I cannot help with that.", None)["empty_or_refusal"] is True
    r = reference_free("Invoices are kept for seven years.", "Invoices are kept seven years by the archive.")
    assert r["empty_or_refusal"] is False and r["answer_words"] == 6 and r["groundedness"] == 1.0
    assert groundedness("Bananas grow in Ecuador.", "Invoices are kept seven years.") == 0.0
    assert groundedness("anything", None) is None


def test_reference_based_and_shadow_agreement():
    rows = [
        {"id": "a", "role": "served", "status": "ok", "answer": "Invoices are kept for seven years.",
         "reference": "Seven years.", "context": None},
        {"id": "b", "role": "served", "status": "ok", "answer": "They are thrown away.", "reference": "Seven years.",
         "context": None},
        {"id": "s", "role": "shadow", "status": "ok", "primary_id": "a", "answer": "Invoices are stored seven years.",
         "reference": "Seven years.", "context": None},
        {"id": "x", "role": "shadow", "status": "shed", "primary_id": "b", "answer": "", "reference": None,
         "context": None},
    ]
    scores = score_rows(rows, DomainRule())
    assert scores["a"]["domain_correct"] == 1.0 and scores["b"]["domain_correct"] == 0.0
    assert scores["s"]["similarity_to_primary"] > 0.8
    assert "similarity_to_primary" not in scores["x"] and scores["x"]["empty_or_refusal"] is True
