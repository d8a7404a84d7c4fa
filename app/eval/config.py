"""The evaluation stage's config: models, metrics and rule, retrieval, the judge, human evaluation."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from app.sections import Section


class EvalModel(Section):
    """One model answering the test questions: a model-store entry served by the project's Serve app,
    or a model id at any OpenAI-compatible endpoint."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Label in reports.")
    model: str | None = Field(None, description="Store entry (served by the project's Serve app) or, with `url`, "
                              "the endpoint's model id. None: the same as name.")
    url: str | None = Field(None, description="Base URL of an OpenAI-compatible API (…/v1); None: the project's "
                            "Serve app, deployed for the evaluation when it does not serve the model already.")
    api_key_env: str | None = Field(None, description="Environment variable holding the endpoint's API key.")

    @property
    def model_id(self) -> str:
        return self.model or self.name


DEFAULT_JUDGE_PROMPT = (
    "You grade answers to questions about a team's documentation.\n\n"
    "Question: {question}\n\nReference answer: {reference}\n\nCandidate answer: {answer}\n\n"
    "Does the candidate answer say what the reference answer says (wording may differ; missing or "
    "contradicting facts make it incorrect)? Reply with one word: correct or incorrect."
)


class JudgeConfig(Section):
    """An LLM that grades each answer against the reference: a second, model-based domain accuracy
    ("LLM-judge accuracy"), reported with its interval and paired tests beside the metric-based one."""

    model: EvalModel = Field(..., description="The judge: a model-store entry (served by the project's Serve "
                             "app with the evaluated models) or, with `url`, a model at any OpenAI-compatible API.")
    prompt: str = Field(DEFAULT_JUDGE_PROMPT, description="User message sent to the judge; must contain "
                        "{question}, {reference} and {answer}. The reply's verdict (after a 'Verdict:' label, else its first "
                        "line naming one) is read with negations ('not correct' is incorrect); abstentions, "
                        "contradictions and replies without a verdict are left out of the judge's accuracy and "
                        "counted (app/eval/judge.py).")
    max_new_tokens: PositiveInt = Field(16, description="Tokens the judge may reply with (greedy).")

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as exc:
            raise ValueError(f"judge prompt is not a valid format string ({exc}); write literal braces as {{{{ }}}}") from None
        missing = {"question", "reference", "answer"} - fields
        unknown = fields - {"question", "reference", "answer"}
        if missing or unknown:
            raise ValueError(f"judge prompt must use exactly {{question}}, {{reference}} and {{answer}}"
                             f" (missing {sorted(missing)}, unknown {sorted(unknown)})")
        return v


class RetrievalConfig(Section):
    """Context for test questions that come without one: passages of the indexed corpus."""

    method: Literal["bm25", "embedding"] = Field("bm25", description="bm25: lexical (Okapi BM25 over "
                                                 "word tokens); embedding: all-MiniLM-L6-v2 cosine.")
    top_k: PositiveInt = Field(2, le=20, description="Passages joined into the context, best first.")
    corpus_dir: str | None = Field(None, description="Folder of documents to index; None: data.docs_dir (or the "
                                   "embedded default corpus). Chunked as the dataset build chunks.")
    scope: Literal["corpus", "topic"] = Field(
        "corpus", description="corpus: every question searches the whole corpus. topic: a question whose topic "
        "names a top-level folder of the corpus searches only that folder (a FAQ about one product searches that "
        "product's manual, as its team's deployment would); other questions search everything.")


class HumanEvalConfig(Section):
    """Human evaluation studies over an evaluation run's answers."""

    db: str | None = Field(None, description="SQLAlchemy URL of the ratings database; None: SQLite at "
                           "<home>/eval/human.db.")
    examples: PositiveInt = Field(20, description="Test examples per study (stratified by topic).")
    per_item: int = Field(2, ge=2, description="Annotators per item (overlap; at least two for agreement).")
    pairwise: bool = Field(True, description="Also ask for side-by-side preferences (each model against the first).")

    def url(self, home: Path) -> str:
        return self.db or f"sqlite:///{home / 'eval' / 'human.db'}"


class EvaluationConfig(Section):
    models: list[str | EvalModel] = Field(
        default_factory=list,
        description="Models compared, the first being the reference of paired tests. A plain string is a "
        "model-store entry. Empty: the base model and the fine-tuned one (training.output_model).")
    test_set: str | None = Field(
        None, description="JSONL of questions (fields question and answer (or reference); context, topic "
        "optional). None: the dataset splits in `splits` of the latest dataset named data.name.")
    splits: list[Literal["test", "validation"]] = Field(
        default_factory=lambda: ["test"],
        description="Without test_set: the splits of the latest dataset evaluated, together (their pair ids are "
        "disjoint). test: the held-out figures; validation as well: more questions for a paired comparison whose "
        "interval is too wide on the test split alone (validation chose the training checkpoint, so a fine-tuned "
        "model's level is not unbiased there; a difference between two variants of it, such as a quantization "
        "drop, is).")
    with_test_split: int = Field(
        0, ge=0, description="With test_set: also evaluate this many examples of the latest dataset's test split "
        "(stratified by topic) in the same run: one report, the per-origin figures and paired tests keep the "
        "two apart. 0: none.")
    max_examples: PositiveInt | None = Field(None, description="Evaluate at most this many examples of each "
                                             "test set (stratified by topic); None: all.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    concurrency: PositiveInt = Field(4, description="Requests in flight per model.")
    serve_one_at_a_time: bool = Field(
        False, description="Deploy the store models one at a time (each alone, with the judge if any: answer, "
        "remove, next) instead of all together: for a machine or GPU that cannot hold every model at once, and "
        "faster on a few CPU cores, where engines starting together compete for them. A running Serve app that "
        "already serves a model is used as it is.")
    timeout_s: PositiveFloat = Field(300.0, description="Total time allowed for one request.")
    max_new_tokens: PositiveInt = 128
    domain_rule: Literal["coverage", "f1_or_similarity", "f1_and_similarity", "f1", "similarity"] = Field(
        "coverage", description="When an answer is correct for domain accuracy (also training's val_domain_accuracy). "
        "coverage: the answer contains the reference (coverage_threshold of its content words, or 1-3 consecutive "
        "answer sentences with similarity >= similarity_threshold) within the length allowance; the others "
        "compare the whole answer with the reference and count a correct but longer answer as wrong.")
    f1_threshold: float = Field(0.5, ge=0, le=1, description="f1* rules: token F1 at least this counts ...")
    similarity_threshold: float = Field(
        0.8, ge=0, le=1, description="... and so does semantic similarity (all-MiniLM-L6-v2 cosine) at least this "
        "(coverage: of the answer's best-matching sentences).")
    coverage_threshold: float = Field(0.6, gt=0, le=1, description="coverage rule: share of the reference's content "
                                      "words the answer must contain.")
    max_length_ratio: float = Field(4.0, ge=1, description="coverage rule: an answer longer than this many times the "
                                    "reference's words (and than length_floor) is wrong, whatever it contains.")
    length_floor: PositiveInt = Field(60, description="coverage rule: answers up to this many words are never too long.")
    bootstrap_samples: PositiveInt = 1000
    confidence: float = Field(0.95, gt=0, lt=1)
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                 description="Folder of the results under <home>/eval; None: dated.")
    human: HumanEvalConfig = Field(default_factory=HumanEvalConfig)
    judge: JudgeConfig | None = Field(None, description="Optional LLM judge: adds an LLM-judge accuracy to "
                                      "every model's metrics (the domain-accuracy rule above stays as set).")

    def model_list(self, base: str, finetuned: str) -> list[EvalModel]:
        """The configured models as EvalModel entries (the default pair when none are listed)."""
        items = self.models or [base, finetuned]
        return [m if isinstance(m, EvalModel) else EvalModel(name=m) for m in items]

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one split (test, validation)")
        if len(set(v)) != len(v):
            raise ValueError(f"splits listed twice: {v}")
        return v

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list) -> list:
        names = [m if isinstance(m, str) else m.name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"evaluation.models lists {dupes} twice (names label report columns)")
        return v
