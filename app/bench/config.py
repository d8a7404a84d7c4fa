"""The benchmark stage's config: Locust load profiles and the concurrency sweep (app.bench)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from app.sections import Section, strictly_rising

PROFILES = ("steady", "step", "stress", "soak")


class LoadConfig(Section):
    """One bounded Locust run (``app bench load``): who is loaded, how, and for how long."""

    profile: Literal["steady", "step", "stress", "soak"] = Field(
        "steady", description="steady: `users` held for `seconds`; step: `step_users` more every `step_seconds` "
        "up to `step_max_users`, to find saturation; stress: `stress_users` started at once and held for "
        "`seconds`, errors and shed requests recorded, then a check that the service still answers the same; "
        "soak: `users` held for `soak_seconds`, resident memory sampled, a leak judged by its slope.")
    users: PositiveInt = Field(4, description="steady and soak: concurrent simulated users held.")
    step_max_users: PositiveInt = Field(8, description="step: the last step's users.")
    stress_users: PositiveInt = Field(16, description="stress: users started at once (set it beyond saturation, "
                                      "which `app bench sweep` finds).")
    spawn_rate: PositiveFloat = Field(2.0, description="Users started per second.")
    seconds: PositiveFloat = Field(60.0, description="steady and stress: how long the load is held.")
    step_users: PositiveInt = Field(2, description="step: users added at each step.")
    step_seconds: PositiveFloat = Field(30.0, description="step: how long each step is held.")
    soak_seconds: PositiveFloat = Field(300.0, description="soak: how long the load is held (bounded).")
    memory_every_s: PositiveFloat = Field(2.0, description="Resident memory of the deployment sampled this often.")
    leak_mib_per_hour: PositiveFloat = Field(
        64.0, description="soak: a leak is called when the lower 95% bound of the resident-memory slope is above "
        "this (MiB per hour); a slope whose interval includes it is 'undecided', not 'no leak'.")
    grace_seconds: PositiveFloat = Field(60.0, description="Extra wall time allowed past the profile's own length "
                                         "before Locust is stopped (requests in flight finish).")

    def peak_users(self) -> int:
        return {"step": self.step_max_users, "stress": self.stress_users}.get(self.profile, self.users)

    def duration_s(self) -> float:
        """The profile's length (what the shape runs), in seconds."""
        if self.profile == "step":
            return self.step_seconds * -(-self.step_max_users // self.step_users)
        if self.profile == "soak":
            return self.soak_seconds
        return self.seconds


class SweepConfig(Section):
    """Concurrency sweep of a running endpoint (``app bench sweep``): closed-loop levels until saturation."""

    concurrencies: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1,
                                             description="Requests in flight at each level (closed loop).")
    requests_per_level: PositiveInt = Field(3, description="Requests per level: this many per concurrent user ...")
    min_requests: PositiveInt = Field(8, description="... and at least this many.")
    warmup_requests: int = Field(2, ge=0, description="Requests sent and discarded before the first level.")
    saturation_gain: float = Field(0.1, ge=0, le=1, description="Stop once a level's output throughput gains less "
                                   "than this share over the previous level's (saturated).")
    slo_p95_ttft_ms: PositiveFloat | None = Field(2000, description="Goodput SLO: p95 time to first token.")
    slo_p95_tpot_ms: PositiveFloat | None = Field(150, description="Goodput SLO: p95 time per output token.")
    slo_p95_e2e_ms: PositiveFloat | None = Field(None, description="Goodput SLO: end-to-end latency.")

    @field_validator("concurrencies")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        return strictly_rising(v)


class PairConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="The comparison's name.")
    baseline: str = Field(..., description="Served model id measured as the baseline.")
    candidate: str = Field(..., description="Served model id compared with it (the A/B public name: through the "
                           "traffic-splitting ingress, pinned to the baseline arm).")


class CompareConfig(Section):
    """Interleaved comparisons of served model ids (``app bench compare``)."""

    pairs: list[PairConfig] = Field(default_factory=list, description="None given: every other served model against "
                                    "the first of serving.models, and the A/B public name against its baseline "
                                    "arm's model when an experiment runs.")
    rounds: PositiveInt = Field(4, description="Rounds per pair, the order alternating (A B, B A, ...).")
    prompts: PositiveInt = Field(24, description="The pool of test-split prompts the rounds draw from; each side "
                                 "answers every one once before the rounds (one token), so both prefix caches "
                                 "hold the same prompts.")
    concurrency: PositiveInt = Field(4, description="Requests in flight (closed loop).")
    requests_per_round: PositiveInt = Field(3, description="Requests per round: this many per concurrent user ...")
    min_requests: PositiveInt = Field(8, description="... and at least this many.")


SUITES = ("quality", "tuned_vs_default", "serve_vs_vllm", "vllm_vs_hf", "int4_vs_bf16")


class SuitesConfig(Section):
    """Comparisons measured by the stage or benchmark that already owns them (``app bench suites``; `app bench
    all` runs them after the live-endpoint benchmarks). Each starts its own servers, so each needs the machine
    to itself: with an endpoint left running they are skipped, with the reason in the report."""

    run: list[Literal["quality", "tuned_vs_default", "serve_vs_vllm", "vllm_vs_hf", "int4_vs_bf16"]] = Field(
        default_factory=lambda: list(SUITES),
        description="quality: fine-tuned vs base answers (the latest `app eval run` that has both, else a new "
        "one); tuned_vs_default: the serving section vs vLLM's defaults (`app serve sweep`); serve_vs_vllm: the "
        "Ray Serve endpoint vs the plain vLLM server (benchmarks/serve_vs_vllm.py); vllm_vs_hf: vLLM vs "
        "transformers `generate` (benchmarks/vllm_vs_hf.py); int4_vs_bf16: each INT4 variant vs its bf16 source "
        "on vLLM (benchmarks/quant_serving.py).")
    concurrencies: list[PositiveInt] = Field(default_factory=lambda: [4, 16], min_length=1,
                                             description="tuned_vs_default and serve_vs_vllm: the load levels.")
    requests_per_level: PositiveInt = Field(4, description="tuned_vs_default and serve_vs_vllm: requests per "
                                            "concurrent user at each level.")
    rounds: PositiveInt = Field(2, description="tuned_vs_default, vllm_vs_hf and int4_vs_bf16: rounds, the order "
                                "alternating (the spread of the ratios comes from them); serve_vs_vllm runs one.")
    hf_batches: list[PositiveInt] = Field(default_factory=lambda: [8, 32], min_length=1,
                                          description="vllm_vs_hf: HF batch sizes; the best is the baseline.")
    hf_prompts: PositiveInt = Field(32, description="vllm_vs_hf: prompts per round.")
    int4_models: list[str] = Field(default_factory=list, description="int4_vs_bf16: store names of INT4 variants; "
                                   "empty: every quantized entry made from the fine-tuned model "
                                   "(training.output_model).")
    int4_requests: PositiveInt = Field(6, description="int4_vs_bf16: single-stream requests per variant.")
    int4_concurrency: PositiveInt = Field(8, description="int4_vs_bf16: requests in flight at the throughput point.")
    timeout_s: PositiveFloat = Field(2400.0, description="Each suite is stopped after this long.")

    @field_validator("concurrencies")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        return strictly_rising(v)


class BenchConfig(Section):
    """Performance benchmarks: Locust load profiles and concurrency sweeps (app.bench)."""

    target: Literal["direct", "ab"] = Field(
        "direct", description="direct: a served model by its own id (`model`); ab: the A/B experiment's public "
        "model name (ab.public_model) through the traffic-splitting ingress.")
    model: str | None = Field(None, description="direct: the model id asked for; None: the first of `models`.")
    models: list[str] = Field(default_factory=list, description="Store models benchmarked on the project's "
                              "endpoint (`app bench all` deploys them when it is down; compare's default pairs "
                              "are each against the first); empty: serving.models, else model.name.")
    url: str | None = Field(None, description="Endpoint base URL; None: the project's (serving.host, serving.port).")
    allow_remote: bool = Field(False, description="Load a host that is not this machine (127.0.0.0/8, ::1, "
                               "localhost). Off by default: a load test is an attack on someone else's server.")
    api_key_env: str | None = Field(None, description="Variable holding the endpoint's key for `url`; None: the "
                                    "project's own key (serving.api_key_env or serving.api_key_file).")
    max_tokens: PositiveInt = Field(64, description="Output tokens per request.")
    ignore_eos: bool = Field(True, description="Fixed output length (as vLLM's benchmark): equal work per request.")
    prompts: PositiveInt = Field(200, description="Test-split questions written for the users (the domain's "
                                 "prompts, with their context, as evaluation sends them).")
    request_timeout_s: PositiveFloat = Field(180.0, description="A request still unanswered after this fails.")
    metrics_url: str | None = Field("http://127.0.0.1:8080/metrics", description="A Ray node's Prometheus "
                                    "endpoint (the engines' KV-cache use and queue during a run); None: not read.")
    release_endpoint: bool = Field(
        False, description="`app bench all`: after the loads, remove the running endpoint even when this run did not "
        "deploy it, so the suites get the machine. The main job sets it: its A/B stage leaves the experiment's "
        "application up and the benchmarks load its models by their own ids (one deployment for both stages).")
    profiles: list[Literal["steady", "step", "stress", "soak"]] = Field(
        default_factory=lambda: ["steady", "step", "stress", "soak"], min_length=1,
        description="`app bench all`: the load profiles run, in order, before the sweep and the comparisons.")
    load: LoadConfig = Field(default_factory=LoadConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    suites: SuitesConfig = Field(default_factory=SuitesConfig)
    out_dir: str | None = Field(None, description="Where runs are written; None: <home>/bench.")

    @model_validator(mode="after")
    def _url(self) -> BenchConfig:
        from app.sections import is_loopback

        url = self.url
        if url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"bench.url {url!r} is not an http(s)://host[:port] URL")
            if not is_loopback(parts.hostname) and not self.allow_remote:
                raise ValueError(f"bench.url {url!r} is not on this machine: set bench.allow_remote=true "
                                 "to load another host (only one you are allowed to load)")
        return self
