"""The correctness gate's comparison and its stored reference (the served check runs in
tests/integration/test_serving.py against the real engine)."""

import json

import pytest

from app.config import ModelConfig
from app.serving.config import GateConfig
from app.model_store import ModelStore
from app.serving import gate

T = gate.Thresholds(min_similarity=0.5, min_agreeing=0.75)


def test_similarity_is_word_lcs_f_measure():
    assert gate.similarity("The capital of France is Paris.", "the capital of france is paris") == 1.0
    # all 4 reference words in order among 6: P = 4/6, R = 4/4
    assert gate.similarity("The capital city is Paris today", "The capital is Paris.") == pytest.approx(
        2 * (4 / 6) * 1 / (4 / 6 + 1))
    assert gate.similarity("L'Étoile, la Marseillaise, la femme", "The capital of France is Paris.") == 0.0
    assert gate.similarity("", "") == 1.0
    assert gate.similarity("", "Paris") == 0.0


def test_prompt_words_do_not_count_so_an_echo_scores_nothing():
    ref, q = "The capital of Japan is Tokyo.", "What is the capital of Japan?"
    assert gate.similarity("The capital of Japan?", ref) == pytest.approx(0.8)  # looks close on all words
    assert gate.similarity("The capital of Japan?", ref, q) == 0.0
    assert gate.similarity("Tokyo is the capital of Japan.", ref, q) == 1.0
    # A reference made only of prompt words (a summary that copies the passage) is compared whole.
    assert gate.similarity("The river rises in the hills", "The river rises in the hills", "The river rises in "
                           "the hills. Summarize.") == 1.0


def test_lcs_length():
    assert gate.lcs_length("abcbdab", "bdcaba") == 4
    assert gate.lcs_length([], ["x"]) == 0


def reference(answers):
    return {"prompts": [f"q{i}" for i in range(len(answers))], "answers": answers}


def test_judge_passes_drifting_wording_and_refuses_garble():
    ref = reference(["The capital of France is Paris.", "A week has seven days.", "It measures temperature.",
                     "Buenos días."])
    drift = ["The capital of France is Paris, a city of art.", "A week has seven days.",
             "A thermometer measures the temperature of air.", "Buenos días."]
    ok = gate.judge("m", drift, ref, T)
    # one rewording falls under the per-answer threshold; the model still passes on 3 of 4
    assert ok.passed and ok.agreeing == 3 and ok.needed == 3
    garbled = ["L'Étoile, la Marseillaise", "semaine semaine", "It measures temperature.", "ocean ocean"]
    bad = gate.judge("m", garbled, ref, T)
    assert not bad.passed and bad.agreeing == 1
    assert bad.worst(1)[0]["similarity"] == 0.0
    msg = gate.failure_message(bad, gate.setting_text({"dtype": "bfloat16", "max_model_len": 10}))
    assert "dtype='bfloat16'" in msg and "1/4 gate answers agree" in msg and "L'Étoile" in msg
    assert "max_model_len" not in msg and "serving.engine_kwargs" in msg  # names where to fix it
    with pytest.raises(ValueError, match="3 answers for 4"):
        gate.judge("m", drift[:3], ref, T)


def test_answers_are_compared_on_the_trusted_prefix_and_near_ties_at_the_start_do_not_count():
    ref = reference(["The capital of France is Paris.", "A week has seven days, Monday to Sunday.",
                     "It measures temperature in degrees.", "Buenos días.", "Tokyo is the capital.", "Nineteen."])
    ref |= {"trusted": ["", "A week has seven days,", "It measures temperature", "", "Tokyo is the capital.",
                        "Nineteen."],
            "trusted_tokens": [0, 6, 4, 1, 5, 4], "min_logit_margins": [0.098, 0.1, 0.05, 0.007, 2.0, 0.5]}
    served = ["L'Étoile, la Marseillaise", "A week has seven days, from Sunday on.", "It measures temperature.",
              "Hoy, buen hora!", "Tokyo is the capital.", "Nineteen."]
    r = gate.judge("m", served, ref, T)
    # France and Spanish break at a near tie before 4 tokens: reported, not counted. The week answer
    # drifts after its trusted prefix, which is all that is compared.
    assert r.passed and (r.agreeing, r.total) == (4, 4) and r.mean_similarity == 1.0
    assert "2 near-tie prompts not counted" in r.summary()
    assert [row["counted"] for row in r.rows] == [False, True, True, False, True, True]
    assert r.rows[1]["similarity_whole"] < 1.0 and r.rows[1]["similarity"] == 1.0
    assert all(row["counted"] for row in r.worst(6))
    garbled = ["x", "You are a circle of wisps.", "A bat is 10000000", "y", "What is?", "------------"]
    bad = gate.judge("m", garbled, ref, T)
    assert not bad.passed and bad.agreeing == 0
    # Too few robust prompts left (under gate.MIN_COUNTED): every prompt counts, on its whole answer.
    few = ref | {"trusted_tokens": [0, 1, 1, 1, 5, 4]}
    r = gate.judge("m", served, few, T)
    assert r.total == 6 and not r.passed


def test_needed_rounds_up():
    assert gate.needed(9, T) == 7
    assert gate.needed(4, gate.Thresholds(0.5, 1.0)) == 4
    assert gate.needed(1, gate.Thresholds(0.5, 0.1)) == 1


def test_reference_is_computed_once_per_fingerprint(stored_model, home, monkeypatch):
    store = ModelStore(home / "models")
    calls = []
    real = gate.compute_reference

    def counting(path, prompts, n):
        calls.append(n)
        first = real(path, prompts[:1], n)  # one real answer keeps it quick
        return first + [{"answer": "x", "trusted": "x", "trusted_tokens": 1, "min_margin": 1.0}] * (len(prompts) - 1)

    monkeypatch.setattr(gate, "compute_reference", counting)
    ref = gate.load_reference(store, stored_model, 12, progress=lambda _: None)
    assert "Paris" in ref["answers"][0] and ref["max_new_tokens"] == 12
    # France's first token is a near tie in float32 ('The' 25.36 vs 'L' 25.26): nothing of it is trusted
    assert 0 < ref["min_logit_margins"][0] < 0.2 and ref["trusted_tokens"][0] == 0 and ref["trusted"][0] == ""
    assert gate.reference_path(store, stored_model.name).is_file()
    again = gate.load_reference(store, stored_model, 12, progress=lambda _: None)
    assert again == ref and calls == [12]
    # A changed checkpoint (other fingerprint) or another answer length gets a new reference.
    gate.load_reference(store, stored_model, 8, progress=lambda _: None)
    assert calls == [12, 8]
    path = gate.reference_path(store, stored_model.name)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"fingerprint": "other"}))
    gate.load_reference(store, stored_model, 8, progress=lambda _: None)
    assert calls == [12, 8, 8]
    path.write_text("{broken")
    gate.load_reference(store, stored_model, 8, progress=lambda _: None)
    assert len(calls) == 4


def test_gate_config_validates():
    assert GateConfig().min_agreeing == 0.75
    with pytest.raises(ValueError):
        GateConfig(min_similarity=1.5)
    with pytest.raises(ValueError):
        GateConfig(unknown=1)
    assert ModelConfig().name  # the store fixture's model


def test_check_models_asks_one_at_a_time_and_all_at_once_and_names_the_setting(stored_model, home):
    """The gate's HTTP side against a stand-in OpenAI endpoint (the real engine: tests/integration)."""
    from fastapi import FastAPI

    from app.model_store import model_fingerprint
    from tests.conftest import web_server

    store = ModelStore(home / "models")
    prompts = list(gate.GATE_PROMPTS)
    answers = [f"answer number {i} with words" for i in range(len(prompts))]
    ref = {"version": gate.REFERENCE_VERSION, "fingerprint": model_fingerprint(stored_model), "prompts": prompts,
           "max_new_tokens": 16, "answers": answers, "trusted": answers, "trusted_tokens": [8] * len(prompts),
           "min_logit_margins": [1.0] * len(prompts)}
    gate.reference_path(store, stored_model.name).write_text(json.dumps(ref))
    calls, replies = [], dict(zip(prompts, answers))

    api = FastAPI()

    @api.post("/v1/chat/completions")
    def chat(body: dict):
        calls.append(body)
        text = replies[body["messages"][0]["content"]]
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}

    cfg = GateConfig(max_new_tokens=16)
    with web_server(api) as url:
        results = gate.check_models(url, [stored_model.name], store, cfg, {"dtype": "bfloat16"}, progress=print)
        assert results[stored_model.name].passed and results[stored_model.name].agreeing == len(prompts)
        assert len(calls) == 2 * len(prompts)
        assert all(c["temperature"] == 0 and c["max_tokens"] == 16 for c in calls)
        for p in prompts[:4]:
            replies[p] = "The capital of France?"
        with pytest.raises(gate.GateError, match=r"correctness gate failed: .*5/9 .*dtype='bfloat16'"):
            gate.check_models(url, [stored_model.name], store, cfg, {"dtype": "bfloat16", "seed": 1},
                              progress=lambda _: None)
