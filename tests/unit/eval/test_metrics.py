import pytest

from app.eval.metrics import domain_correct, exact_match, mean_scores, normalize_answer, score_answers, token_f1


def test_normalization_follows_squad():
    assert normalize_answer("The  Capital, of France!") == "capital of france"
    assert normalize_answer("An apple a day") == "apple day"


@pytest.mark.parametrize("pred, ref, em, f1", [
    ("Paris", "paris.", 1.0, 1.0),
    ("the city of Paris", "Paris", 0.0, 2 * (1 / 3) * 1 / (1 / 3 + 1)),   # precision 1/3, recall 1
    # "return list of threads" vs "return list of all thread objects": 3 common, P 3/4, R 3/6
    ("Return a list of threads", "Return a list of all Thread objects", 0.0, 2 * 0.75 * 0.5 / 1.25),
    ("", "", 1.0, 1.0),
    ("", "something", 0.0, 0.0),
    ("blue", "red", 0.0, 0.0),
    ("x y y", "y y z", 0.0, 2 / 3),   # multiset overlap: common 2 of 3 on each side
])
def test_exact_match_and_f1_by_hand(pred, ref, em, f1):
    assert exact_match(pred, ref) == em
    assert token_f1(pred, ref) == pytest.approx(f1)


@pytest.mark.parametrize("rule, f1, sim, expected", [
    ("f1_or_similarity", 0.6, 0.1, True), ("f1_or_similarity", 0.1, 0.9, True), ("f1_or_similarity", 0.4, 0.7, False),
    ("f1_and_similarity", 0.6, 0.7, False), ("f1_and_similarity", 0.5, 0.8, True),
    ("f1", 0.5, 0.0, True), ("similarity", 0.9, 0.79, False),
])
def test_domain_rule(rule, f1, sim, expected):
    assert domain_correct(f1, sim, 0.5, 0.8, rule) is expected


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="unknown domain accuracy rule"):
        domain_correct(1, 1, 0.5, 0.8, "vibes")


def test_scores_with_real_embeddings():
    rows = score_answers(["Return the number of items in a container.", "A kind of fish."],
                         ["Return the number of items in a container.", "Return the length of an object."],
                         0.5, 0.8)
    assert rows[0] == {"exact_match": 1.0, "token_f1": 1.0, "semantic_similarity": pytest.approx(1.0, abs=1e-5),
                       "domain_correct": 1.0}
    assert rows[1]["domain_correct"] == 0.0 and rows[1]["semantic_similarity"] < 0.5
    means = mean_scores(rows)
    assert means["domain_correct"] == 0.5 and means["exact_match"] == 0.5


def test_overlap_metrics_by_hand():
    from app.eval.metrics import corpus_bleu, overlap_scores

    same, partial, empty = overlap_scores(["the cat sat on the mat", "cat sat", ""],
                                          ["the cat sat on the mat", "the cat sat on the mat", "a reference"])
    assert same == {"bleu": pytest.approx(1.0), "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # "cat sat" against 6 reference tokens: ROUGE-1 P 2/2, R 2/6 -> F 0.5; ROUGE-2 P 1/1, R 1/5 -> F 1/3.
    assert partial["rouge1"] == pytest.approx(0.5) and partial["rouge2"] == pytest.approx(1 / 3)
    assert partial["rougeL"] == pytest.approx(0.5)
    # BLEU's brevity penalty exp(1 - 6/2) with effective order (unigram and bigram precision 1).
    assert partial["bleu"] == pytest.approx(2.718281828 ** (1 - 3), rel=1e-3)
    assert empty == {"bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        overlap_scores(["a", "b"], ["a"])
