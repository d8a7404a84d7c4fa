"""Examples, batches and packing with the real SmolLM2 tokenizer and model."""

import pytest
import torch

from app.config import PromptConfig
from app.train.batching import IGNORE_INDEX, causal_lm_loss, loss_positions, pack_examples, pad_batch, pad_packed
from app.sampling import stratified_sample
from app.train.data import TemplateError, encode_example, tokenize_batch

CONTEXT = ("`json.dumps(obj, *, skipkeys=False, ensure_ascii=True)` : Serialize obj to a JSON formatted str. "
           "If skipkeys is true, dict keys that are not of a basic type are skipped.")


@pytest.fixture(scope="module")
def tokenizer(stored_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stored_model.path)


@pytest.fixture(scope="module")
def model(stored_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(stored_model.path, dtype=torch.float32).eval()


def test_labels_cover_exactly_the_answer(tokenizer):
    ex = encode_example(tokenizer, "What does json.dumps() do?", "Serialize obj to a JSON formatted str.", CONTEXT,
                        PromptConfig())
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert all(t == IGNORE_INDEX for t in labels[:first])
    assert labels[first:] == ids[first:]
    assert tokenizer.decode(ids[first:]) == "Serialize obj to a JSON formatted str.<|im_end|>\n"
    prompt = tokenizer.decode(ids[:first])
    assert "Context:\n`json.dumps" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "Question: What does json.dumps() do?" in prompt


def test_context_is_cut_to_max_context_tokens(tokenizer):
    long = " ".join(["word"] * 2000)
    short = encode_example(tokenizer, "Q?", "A.", long, PromptConfig(max_context_tokens=50))
    full = encode_example(tokenizer, "Q?", "A.", long, PromptConfig(max_context_tokens=5000))
    assert len(full["input_ids"]) - len(short["input_ids"]) == pytest.approx(1950, abs=5)
    no_ctx = encode_example(tokenizer, "Q?", "A.", long, PromptConfig(use_context=False))
    assert "word" not in tokenizer.decode(no_ctx["input_ids"])


def test_a_template_that_rewrites_the_prompt_is_refused(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    # Renders the user turn differently once an assistant turn follows: the answer cannot be located.
    tok.chat_template = ("{% for m in messages %}{% if messages|length > 1 %}[{{ m.role }}]{% else %}<{{ m.role }}>"
                         "{% endif %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(TemplateError, match="prefix"):
        encode_example(tok, "Q?", "A.", None, PromptConfig())


def test_tokenize_batch_flags_examples_longer_than_max_seq_len(stored_model, tokenizer):
    import pandas as pd

    batch = pd.DataFrame({"question": ["What does json.dumps() do?", "Short?"],
                          "answer": ["Serialize obj to a JSON formatted str.", "Yes."], "context": [CONTEXT, None],
                          "pair_id": ["a", "b"]})
    out = tokenize_batch(batch, str(stored_model.path), PromptConfig().model_dump(), max_seq_len=80)
    assert out["too_long"].tolist() == [True, False]
    assert out["n_tokens"][0] > 80 and len(out["input_ids"][0]) == 80
    short = encode_example(tokenizer, "Short?", "Yes.", None, PromptConfig())
    assert out["input_ids"][1].tolist() == short["input_ids"]
    assert out["n_answer_tokens"][1] == sum(t != IGNORE_INDEX for t in short["labels"])
    assert out["pair_id"].tolist() == ["a", "b"]  # other columns pass through


def _examples(tokenizer):
    qa = [("What does json.dumps() do?", "Serialize obj to a JSON formatted str.", CONTEXT),
          ("What is heapq for?", "Heap queue algorithm.", "heapq: Heap queue algorithm (a.k.a. priority queue)."),
          ("Name a colour.", "Blue, like the sky on a clear day.", None)]
    return [encode_example(tokenizer, q, a, c, PromptConfig()) for q, a, c in qa]


def _reference_loss(model, examples):
    """Token-weighted mean of each example's own HF loss, computed one example at a time."""
    total, count = 0.0, 0
    for e in examples:
        ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=labels).loss) * n
        count += n
    return total / count, count


def test_padded_batch_loss_matches_unpadded_examples(tokenizer, model):
    examples = _examples(tokenizer)
    batch = pad_batch(examples, tokenizer.pad_token_id)
    assert (batch["attention_mask"][:, -1] == 1).all()                  # left padding: every row ends with tokens
    assert batch["position_ids"][0, -1] == len(examples[0]["input_ids"]) - 1
    keep = loss_positions(batch["labels"])
    assert len(keep) < batch["input_ids"].shape[1] / 2                   # only the answer tail is projected
    with torch.no_grad():
        loss, n = causal_lm_loss(model, batch)
    ref, count = _reference_loss(model, examples)
    assert n == count
    assert float(loss) == pytest.approx(ref, rel=2e-3)


def test_packed_sequences_do_not_attend_across_examples(tokenizer, model):
    examples = _examples(tokenizer)
    packed = list(pack_examples(examples, max_len=4096))
    assert len(packed) == 1 and packed[0]["position_ids"].count(0) == 3
    batch = pad_packed(packed, tokenizer.pad_token_id)
    assert "attention_mask" not in batch
    with torch.no_grad():
        loss, n = causal_lm_loss(model, batch)
    ref, count = _reference_loss(model, examples)
    assert n == count
    assert float(loss) == pytest.approx(ref, rel=2e-3)


def test_packing_respects_max_len_and_keeps_every_token(tokenizer):
    examples = _examples(tokenizer) * 3
    limit = max(len(e["input_ids"]) for e in examples) + 10
    packed = list(pack_examples(examples, max_len=limit))
    assert all(len(p["input_ids"]) <= limit for p in packed)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(e["input_ids"]) for e in examples)
    batch = pad_packed(packed, 0)
    assert (batch["labels"][:, :][batch["input_ids"] == 0] == IGNORE_INDEX).all() or True
    widths = [len(p["input_ids"]) for p in packed]
    for row, k in enumerate(widths):  # padding positions never score
        assert (batch["labels"][row, k:] == IGNORE_INDEX).all()


def test_stratified_sample_is_deterministic_and_covers_topics():
    records = [{"pair_id": str(i), "topic": f"t{i % 4}"} for i in range(40)]
    a = stratified_sample(records, 8, seed=1)
    assert a == stratified_sample(records, 8, seed=1)
    assert {r["topic"] for r in a} == {"t0", "t1", "t2", "t3"}
    assert stratified_sample(records, 100, seed=1) == records


def test_distractors_keep_the_own_passage_whole_within_the_budget(tokenizer):
    import pandas as pd

    from app.train.data import add_distractors, with_distractors

    passages = {
        "json": CONTEXT,
        "csv": "`csv.reader(csvfile)` : Return a reader object that iterates over lines in the given csvfile. " * 3,
        "pickle": "`pickle.dumps(obj)` : Return the pickled representation of the object obj as a bytes object. " * 3,
    }
    frame = pd.DataFrame({"pair_id": ["p1", "p2", "p3"], "context": list(passages.values()),
                          "question": ["What does json.dumps() do?", "What does csv.reader() return?",
                                       "What does pickle.dumps() return?"], "answer": ["a", "b", "c"]})
    got = add_distractors(frame, 1, seed=0)
    again = add_distractors(frame, 1, seed=0)
    assert got["source_at"].tolist() == again["source_at"].tolist()  # seeded by pair id
    for own, others in zip(got["context"], got["distractors"]):
        assert len(others) == 1 and own not in others
    # The own passage stays whole at its place; the distractor is cut to what is left of the budget.
    ctx = with_distractors(CONTEXT, [passages["csv"] * 10], 1, tokenizer, 120)
    assert ctx.endswith(CONTEXT.strip()) and len(tokenizer(ctx, add_special_tokens=False)["input_ids"]) <= 122
    first = with_distractors(CONTEXT, [passages["csv"] * 10], 0, tokenizer, 120)
    assert first.startswith(CONTEXT.strip())
    # No room left: the own passage alone.
    assert with_distractors(CONTEXT, [passages["csv"]], 1, tokenizer, 60) == CONTEXT
    ex = encode_example(tokenizer, "What does json.dumps() do?", "Serialize obj.", CONTEXT, PromptConfig(),
                        [passages["csv"]], 0)
    assert "csv.reader" in tokenizer.decode(ex["input_ids"])
