"""The dataset stage's config: documents, chunking, LLM generation, quality checks, splits, review."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from app.sections import Section

# The kinds of QA pairs taken directly from the documents by rule (app.data.extract).
EXTRACT_KINDS = ("faq", "heading_question", "definition", "section", "signature", "term", "example", "statement")


class SplitFractions(Section):
    train: float = Field(0.8, gt=0, lt=1)
    validation: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (train + validation + test = {total:g})")
        return self


class GenerationConfig(Section):
    """LLM-written QA pairs: one request per chunk through ray.data.llm, parsed into question/answer(/evidence)."""

    enabled: bool = Field(True, description="Ask an LLM for QA pairs over the chunks.")
    backend: Literal["serve", "http", "vllm"] = Field(
        "serve",
        description="serve: the project's own Ray Serve app on the local model (deployed if not up); "
        "http: any OpenAI-compatible endpoint at `url`; vllm: in-process vLLM through ray.data.llm's "
        "vLLM processor (GPU clusters).",
    )
    url: str | None = Field(
        None, description="http backend: base URL of an OpenAI-compatible API, e.g. https://host/v1."
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the endpoint's API key (never the key itself)."
    )
    model: str | None = Field(None, description="Model id at the endpoint; None: the configured base model.")
    mode: Literal["answer_first", "pairs"] = Field(
        "answer_first",
        description="answer_first: answer sentences are picked from the chunk by rule and the model writes only the "
        "question each one answers (what a small model can do; the answer is grounded by construction); pairs: "
        "the model writes question and answer (prompt_style), for capable models.",
    )
    guided: bool = Field(
        True, description="Guided decoding: the reply is held to a question pattern anchored on the answer's subject, "
        "condition or key term (answer_first, vLLM's structured_outputs regex) or a JSON schema (pairs with prompt_style json, response_format), so no output "
        "is malformed. Turn off for endpoints that are not vLLM.")
    answers_per_chunk: PositiveInt = Field(3, le=10, description="answer_first: answer sentences asked about per chunk.")
    min_chunks: int = Field(
        0, ge=0, description="Chunks asked about even when extracted pairs already reach the target (model-written "
        "questions in every dataset); 0: the model is asked only when extraction falls short.")
    max_chunks: PositiveInt | None = Field(
        None, description="Chunks asked about at most (dealt round-robin across topics); None: as many as the target needs.")
    target_margin: float = Field(
        1.15, ge=1, le=3, description="Generation stops once the estimated accepted pairs reach target_pairs times "
        "this (deduplication and the split rules take some).")
    estimate_requests: PositiveInt = Field(
        96, description="Requests answered before the yield is estimated and an unreachable target is reported.")
    estimate_within_s: PositiveFloat = Field(
        240.0, description="The first estimate comes after this many seconds of generation at the latest.")
    prompt_style: Literal["labelled", "json"] = Field(
        "labelled",
        description="labelled: 'Question: / Answer:' lines, which small models follow (evidence is then matched "
        "in the chunk); json: a JSON list with question, answer and evidence, for capable models.",
    )
    pairs_per_chunk: PositiveInt = Field(1, le=10, description="QA pairs asked for per chunk.")
    temperature: NonNegativeFloat = Field(0.0, le=2.0)
    max_tokens: PositiveInt = Field(96, description="Output tokens per request.")
    batch_size: PositiveInt = Field(
        8, description="Rows per Ray Data batch; an HTTP actor sends a batch's requests at once (up to `inflight`).")
    concurrency: PositiveInt = Field(2, description="Parallel request actors (each sends one batch at a time).")
    inflight: PositiveInt = Field(8, description="HTTP backends: requests in flight per actor.")
    max_retries: int = Field(3, ge=0, description="Retries on 408/429/5xx and connection errors.")
    retry_wait_s: PositiveFloat = Field(1.0, description="Base of the exponential backoff between retries.")
    qps: PositiveFloat | None = Field(None, description="Request rate limit per actor; None: unlimited.")
    timeout_s: PositiveFloat = Field(180.0, description="Total time allowed for one request.")


class QualityConfig(Section):
    """Thresholds of the quality checks; a pair failing any of them is rejected with its reason."""

    min_question_words: PositiveInt = 4
    max_question_words: PositiveInt = 40
    min_answer_words: PositiveInt = 2
    max_answer_words: PositiveInt = 150
    min_lexical_grounding: float = Field(
        0.6, ge=0, le=1,
        description="Share of the answer's new content words (not already in the question) found in the source chunk."
    )
    min_semantic_grounding: float = Field(
        0.45, ge=-1, le=1, description="Cosine (all-MiniLM-L6-v2) of the answer with its evidence passage."
    )
    min_relevance: float = Field(0.25, ge=-1, le=1, description="Cosine of the question with the answer.")
    max_answer_in_question: float = Field(
        0.8, ge=0, le=1, description="Reject when this share of the answer's content words is in the question."
    )
    min_question_grounding: float = Field(
        0.5, ge=0, le=1, description="Share of the question's content words found in the source chunk."
    )
    min_model_question_relevance: float = Field(
        0.45, ge=-1, le=1, description="Model-written questions (llm, llm_question): cosine of the question with the "
        "answer, stricter than min_relevance because a small model's question often drifts from its answer.")
    question_points_at_answer: bool = Field(
        True, description="Model-written questions: of all the sentences of the chunk, the answer's must be the one "
        "closest to the question (a round-trip check: the question would find its own answer).")
    near_duplicate: float = Field(
        0.92, gt=0, le=1,
        description="Two pairs are near duplicates when their questions' cosine is at least this ...",
    )
    near_duplicate_answer: float = Field(0.8, ge=-1, le=1, description="... and their answers' cosine at least this.")


class DataConfig(Section):
    name: str = Field("stdlib-qa", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Dataset name.")
    docs_dir: str | None = Field(
        None, description="Folder of the team's documents. None: the embedded Python standard library docs."
    )
    extensions: list[str] = Field(
        default_factory=lambda: [".md", ".markdown", ".txt", ".html", ".htm", ".pdf"],
        description="File types read from docs_dir; other files are listed as skipped.",
    )
    max_docs: PositiveInt | None = Field(None, description="Read at most this many documents (first by path).")
    chunk_tokens: PositiveInt = Field(256, description="Chunk length in tokens (the base model's tokenizer).")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks.")
    min_chunk_tokens: PositiveInt = Field(24, description="Shorter chunks (after the first) merge into the previous.")
    topics_from: Literal["auto", "structure", "cluster"] = Field(
        "auto",
        description="Topic label per chunk. structure: the document's front-matter `topic`, else its "
        "top-level folder; cluster: k-means over chunk vectors (topic_vectors); auto: structure when it "
        "gives at least 2 topics and covers 80% of the documents, else cluster.",
    )
    n_topics: PositiveInt = Field(8, description="Clusters when topics come from clustering.")
    topic_vectors: Literal["tfidf", "minilm"] = Field(
        "tfidf", description="What chunks are clustered on: tfidf (TF-IDF reduced by LSA, seconds) or minilm "
        "(all-MiniLM-L6-v2 embeddings, about 30 chunks/s on 2 cores).")
    extract: list[Literal[EXTRACT_KINDS]] = Field(  # type: ignore[valid-type] (a tuple of literals)
        default_factory=lambda: list(EXTRACT_KINDS),
        description="Kinds of QA pairs taken directly from the documents.",
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    target_pairs: PositiveInt = Field(1000, description="Accepted pairs the build must reach, else it fails.")
    min_test_pairs: int = Field(100, ge=0, description="Pairs the test split must hold, else the build fails.")
    splits: SplitFractions = Field(default_factory=SplitFractions)
    group_by: Literal["document", "chunk"] = Field(
        "document", description="Unit kept whole inside one split, so nothing leaks across splits."
    )
    review_db: str | None = Field(
        None, description="SQLAlchemy URL of the review database; None: SQLite at <home>/review/review.db."
    )
    concurrency: PositiveInt = Field(2, description="Ray Data parallelism of the CPU stages.")

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if not e.startswith(".") or len(e) < 2]
        if bad:
            raise ValueError(f"extensions must look like '.md', got {bad}")
        return [e.lower() for e in v]

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> DataConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        if self.generation.backend == "http" and self.generation.enabled and not self.generation.url:
            raise ValueError("generation.backend 'http' needs generation.url")
        return self

    def review_url(self, home: Path) -> str:
        return self.review_db or f"sqlite:///{home / 'review' / 'review.db'}"
