"""Engine arguments of the serving section: the measured CPU default and what the sweep's baseline sends."""

from pathlib import Path

import pytest

from app.serving.config import ServingConfig, VLLM_DEFAULTS
from app.serving.builder import engine_args, vllm_server_command


def test_default_is_bf16_compiled_with_vllms_own_kernel_choice():
    e = engine_args(ServingConfig())
    assert e["dtype"] == "bfloat16" and "enforce_eager" not in e and "compilation_config" not in e


def test_gpu_keeps_vllms_defaults_and_memory_share():
    e = engine_args(ServingConfig(accelerator="gpu", cpu_kernels="torch"))
    assert "enforce_eager" not in e and "compilation_config" not in e  # CPU kernel choice ignored on GPUs
    assert e["gpu_memory_utilization"] == 0.9


def test_vllm_defaults_trial_sends_no_scheduling_knobs_but_the_same_dtype():
    e = engine_args(ServingConfig.model_validate(ServingConfig().model_dump() | VLLM_DEFAULTS))
    assert "enforce_eager" not in e and "compilation_config" not in e
    assert "max_num_seqs" not in e and e["dtype"] == "bfloat16"  # same work as the other trials


def test_explicit_modes_and_user_compilation_settings():
    e = engine_args(ServingConfig(engine_mode="eager", cpu_kernels="torch"))
    assert e["enforce_eager"] is True and e["compilation_config"] == {"custom_ops": ["none"]}
    e = engine_args(ServingConfig(engine_mode="eager", cpu_kernels="vllm"))
    assert e["compilation_config"] == {"custom_ops": ["all"]}
    # engine_kwargs wins key by key, keeping the kernel choice unless it names custom_ops itself.
    e = engine_args(ServingConfig(cpu_kernels="torch", engine_kwargs={"compilation_config": {"mode": 0}}))
    assert e["compilation_config"] == {"custom_ops": ["none"], "mode": 0}
    e = engine_args(ServingConfig(cpu_kernels="torch", engine_kwargs={"compilation_config": {"custom_ops": ["all"]},
                                                                      "seed": 3}))
    assert e["compilation_config"] == {"custom_ops": ["all"]} and e["seed"] == 3


def test_plain_vllm_server_gets_the_same_arguments():
    cmd = vllm_server_command("m", Path("/models/m"), ServingConfig(engine_mode="eager", cpu_kernels="torch"), 8123)
    assert "--enforce-eager" in cmd and cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert cmd[cmd.index("--compilation-config") + 1] == '{"custom_ops": ["none"]}'


# -- CORS: Ray's any-origin middleware out; exactly serving.cors_origins in ------------------------------


def _cors(app):
    from starlette.middleware.cors import CORSMiddleware

    return [m for m in app.user_middleware if isinstance(m.cls, type) and issubclass(m.cls, CORSMiddleware)]


def _app_like_rays(api_key=None):
    """A FastAPI app with Ray's CORS middleware (as ray.llm's ingress init adds it), a generation
    route, and the guard in front, as fastapi_app builds it."""
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    from app.serving.guard import Limits, RequestGuard

    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"],
                       allow_headers=["*"])

    @app.post("/v1/chat/completions")
    def chat():
        return {"ok": True}

    app.add_middleware(RequestGuard, known_models={"m"}, limits=Limits(api_key=api_key))
    return app


def test_no_origins_removes_rays_cross_origin_access():
    from fastapi.testclient import TestClient

    from app.serving.builder import set_cors

    app = _app_like_rays()
    set_cors(app, [])
    assert _cors(app) == []
    r = TestClient(app).options("/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_configured_origins_only_and_outermost():
    from fastapi.testclient import TestClient

    from app.serving.builder import set_cors

    app = _app_like_rays(api_key="k")
    set_cors(app, ["https://ui.example"])
    (cors,) = _cors(app)
    assert app.user_middleware[0] is cors and cors.kwargs["allow_origins"] == ["https://ui.example"]
    assert cors.kwargs["allow_credentials"] is False
    client = TestClient(app)
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    # A preflight carries no key: answered by CORS before the guard asks for one.
    r = client.options("/v1/chat/completions", headers={"Origin": "https://ui.example", **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
    r = client.options("/v1/chat/completions", headers={"Origin": "https://evil.example", **pre})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    # The guard's refusals carry the header, so the page can read why.
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=body, headers={"Origin": "https://ui.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://ui.example"
    r = client.post("/v1/chat/completions", json=body, headers={"Origin": "https://ui.example",
                                                                "Authorization": "Bearer k"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    r = client.post("/v1/chat/completions", json=body, headers={"Origin": "https://evil.example",
                                                                "Authorization": "Bearer k"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_cannot_change_once_the_app_started():
    import pytest
    from fastapi.testclient import TestClient

    from app.serving.builder import set_cors

    app = _app_like_rays()
    TestClient(app).get("/nothing")
    with pytest.raises(RuntimeError, match="started"):
        set_cors(app, [])


def test_the_served_fastapi_app_is_rays_with_the_guard_and_our_cors():
    """On Ray's own app (ray.llm's ingress init, built without a cluster): its any-origin CORS is gone."""
    from app.serving.builder import fastapi_app
    from app.serving.guard import RequestGuard

    app = fastapi_app(ServingConfig(models=["m"]), "k")
    assert _cors(app) == []
    guard = [m for m in app.user_middleware if m.cls is RequestGuard]
    assert len(guard) == 1 and guard[0].kwargs["limits"].api_key == "k" and guard[0].kwargs["known_models"] == {"m"}
    assert app.user_middleware[0] is guard[0]  # in front of Ray's middleware
    app = fastapi_app(ServingConfig(models=["m"], cors_origins=["https://ui.example", "http://localhost:3000"]), None)
    (cors,) = _cors(app)
    assert cors.kwargs["allow_origins"] == ["https://ui.example", "http://localhost:3000"]
    assert app.user_middleware[0] is cors and app.user_middleware[1].cls is RequestGuard


def test_a_deployment_that_cannot_be_scheduled_is_refused_before_deploying():
    """Four models need 9 logical CPUs (2 per model replica, 1 for the ingress): on the default local
    cluster of 8 the fourth replica would wait forever to be scheduled."""
    from app.serving.manager import ServeError, check_capacity, cpus_needed

    three = ServingConfig(models=["a", "b", "c"])
    assert cpus_needed(three) == 7
    check_capacity(three, 8)
    four = ServingConfig(models=["a", "b", "c", "d"])
    with pytest.raises(ServeError, match=r"needs 9 logical CPUs .* it has 8: .*serving.cluster_cpus"):
        check_capacity(four, 8)
    assert cpus_needed(ServingConfig(models=["a"], num_replicas=2, num_ingress_replicas=2)) == 6
    assert cpus_needed(ServingConfig(models=["a"], autoscaling=True, min_replicas=0, max_replicas=3)) == 3
