"""Deploying, watching and removing the Serve application (``app serve up|status|down``)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil

from app import cluster
from app.config import ExperimentConfig
from app.endpoint import base_url, headers, listed_models, serving_key
from app.errors import AppError
from app.model_store import ModelStore
from app.serving import gate
from app.serving.builder import ServeAppArgs, build_app, engine_args, http_options
from app.serving.config import ServingConfig

# Deferred imports: ray is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

# httpx logs every request at INFO; once Ray has set up structured logging in the driver, the
# readiness polls of a deployment would fill a job's output with them.
logging.getLogger("httpx").setLevel(logging.WARNING)

APP_NAME = "llm"


class ServeError(AppError, RuntimeError):
    """Serving could not be started or reached; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_served(cfg: ExperimentConfig, model_ids: list[str], purpose: str,
                  progress: Callable[[str], None] = print, replace_others: bool = True) -> bool:
    """Join the cluster of the running Serve app when it serves every id in ``model_ids``, else
    deploy ``cfg.serving`` on the persistent local cluster (or the configured one).

    Returns True when this call deployed (the caller removes the app when done). With
    ``replace_others=False`` an app serving other models is refused (ServeError) rather than replaced.
    """
    import ray

    key = serving_key(cfg.serving)  # before the try: a missing key is the config's error, not "not running"
    try:
        running = listed_models(base_url(cfg.serving) + "/v1", key)
    except (httpx.HTTPError, ValueError, TypeError, KeyError):
        running = set()
    if set(model_ids) <= running and attach(cfg):
        progress(f"using the running Serve endpoint {base_url(cfg.serving)} for {', '.join(model_ids)}")
        return False
    if running and not replace_others:
        raise ServeError(f"the Serve app at {base_url(cfg.serving)} serves {sorted(running)}, not all of "
                         f"{model_ids}: stop it (`app serve down`) or serve these models (serving.models)")
    progress(f"deploying {', '.join(cfg.serving.models or [cfg.model.name])} on Ray Serve for {purpose} "
             "(minutes on a CPU machine)")
    if ray.is_initialized():
        # An earlier stage of this process (the pipeline's model check) may have started a private
        # local cluster, which would die with the process and has too few CPUs for Serve: let `up`
        # join or start the persistent one instead.
        ray.shutdown()
    up(cfg, progress)
    return True


def cluster_address(cfg: ExperimentConfig, progress: Callable[[str], None] = print) -> str:
    """The Ray cluster to deploy on: the configured one, a running local one, or a new local one.

    Serve applications live as long as their cluster, so `app serve up` starts a persistent local
    cluster (`ray start --head`) rather than one tied to this process.
    """
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        return address
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ)
    if "RAY_AUTH_MODE" not in env and (os.environ.get("RAY_AUTH_TOKEN") or Path("~/.ray/auth_token").expanduser().exists()):
        env["RAY_AUTH_MODE"] = "token"  # the CLI, unlike ray.init, does not send the token by itself
    probe = subprocess.run([str(bin_dir / "ray"), "status"], capture_output=True, text=True, timeout=60, env=env)
    if probe.returncode == 0:
        return "auto"
    progress(f"starting a local Ray cluster ({cfg.serving.cluster_cpus} logical CPUs)")
    proc = subprocess.run(
        [str(bin_dir / "ray"), "start", "--head", f"--num-cpus={cfg.serving.cluster_cpus}",
         "--disable-usage-stats", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         "--metrics-export-port=8080"],
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ServeError(f"`ray start --head` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return "auto"


def wait_ready(s: ServingConfig, timeout_s: float, progress: Callable[[str], None] = print) -> dict[str, float]:
    """Wait until /v1/models lists every model and each answers a one-token request.

    Returns seconds until each model first answered. Raises ServeError naming the models that did
    not, with Serve's own status, once ``timeout_s`` has passed.
    """
    url, hdrs = base_url(s), headers(s)
    start = time.time()
    ready: dict[str, float] = {}
    last_error = ""
    with httpx.Client(timeout=30) as client:
        while time.time() - start < timeout_s:
            try:
                listed = {m["id"] for m in client.get(f"{url}/v1/models", headers=hdrs).json().get("data", [])}
                for model in s.models:
                    if model in ready or model not in listed:
                        continue
                    r = client.post(f"{url}/v1/chat/completions", headers=hdrs, json={
                        "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
                    if r.status_code == 200:
                        ready[model] = round(time.time() - start, 1)
                        progress(f"model {model} ready after {ready[model]:.0f} s")
                    else:
                        last_error = f"{model}: HTTP {r.status_code} {r.text[:200]}"
                if len(ready) == len(s.models):
                    return ready
            except (httpx.HTTPError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(2)
    missing = [m for m in s.models if m not in ready]
    raise ServeError(f"models {missing} not ready after {timeout_s:.0f} s at {url} (last error: {last_error}); "
                     f"Serve status:\n{status_text()}")


def status_text() -> str:
    try:
        from ray import serve

        def text(status: Any) -> str:  # Serve's status enums print as "ApplicationStatus.RUNNING"
            return str(getattr(status, "value", status))

        st = serve.status()
        lines = []
        for name, a in st.applications.items():
            lines.append(f"application {name}: {text(a.status)} {a.message[:300]}".rstrip())
            for dname, d in a.deployments.items():
                lines.append(f"  {dname}: {text(d.status)} {dict(d.replica_states)} {d.message[:300]}".rstrip())
        return "\n".join(lines) or "no applications"
    except Exception as exc:  # noqa: BLE001 - status is diagnostic, never the failure itself
        return f"(serve status unavailable: {exc})"


def up(cfg: ExperimentConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Deploy every configured model on one endpoint and wait until each answers."""
    import ray

    serving_key(cfg.serving)  # a key named but missing fails here, before a cluster is started
    # Connect first: building the application initialises Ray implicitly, and a cluster started
    # that way lives and dies with this process.
    address = cluster_address(cfg, progress)
    if not ray.is_initialized():
        cluster.join_quietly(address)
    return deploy(cfg.paths.resolved_home(), cfg.serving, progress)


def cpus_needed(s: ServingConfig) -> int:
    """Logical CPUs the application reserves on CPU: each model replica holds 2 (the replica actor
    and its engine worker's bundle), each ingress replica 1. A replica that does not fit is never
    scheduled, and Serve waits for it without an error."""
    replicas = max(1, s.min_replicas) if s.autoscaling else s.num_replicas
    return 2 * replicas * len(s.models) + s.num_ingress_replicas


def check_capacity(s: ServingConfig, cluster_cpus: float) -> None:
    """ServeError before deploying when the cluster has fewer logical CPUs than the app reserves."""
    need = cpus_needed(s)
    if cluster_cpus < need:
        raise ServeError(
            f"serving {len(s.models)} model(s) needs {need} logical CPUs on this cluster (2 per model replica, "
            f"1 per ingress replica) and it has {cluster_cpus:g}: the last replicas would wait forever to be "
            "scheduled. Serve fewer models (serving.models) or, for a local cluster, raise serving.cluster_cpus "
            "(stop the running one first: `ray stop`).")


def deploy(home: Path, s: ServingConfig, progress: Callable[[str], None] = print,
           replace: bool = False, application: Any = None) -> dict[str, Any]:
    """Deploy ``s`` on the connected cluster and wait until every model answers.

    ``replace`` removes the running application first and waits for its replicas to go, so a new
    setting never shares the machine with the old engines (the sweep measures one at a time).
    ``application``: an application already built for ``s`` (an experiment's); by default :func:`build_app`'s.
    """
    from ray import serve

    if application is None:
        args = ServeAppArgs(home=str(home), serving=s).model_dump(mode="json")
        application = build_app(args)  # fails here, before deploying, on bad args or missing models
    if s.accelerator == "cpu":
        import ray

        check_capacity(s, ray.cluster_resources().get("CPU", 0))
    serve.start(http_options=http_options(s))
    check_http_port(s)
    if replace and APP_NAME in serve.status().applications:
        progress("removing the running application")
        remove_app()
    progress(f"deploying {', '.join(s.models)} at {base_url(s)}")
    started = time.time()
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
    ready = wait_ready(s, s.ready_timeout_s, progress)
    info = {"url": base_url(s), "models": s.models, "ready_after_s": ready,
            "deploy_seconds": round(time.time() - started, 1)}
    if s.gate.enabled:
        gate_started = time.time()
        try:
            info["gate"] = check_gate(home, s, progress)
        except ServeError:
            # A setting that garbles output must not stay up looking healthy.
            progress("removing the application that failed the correctness gate")
            remove_app()
            raise
        info["gate_seconds"] = round(time.time() - gate_started, 1)
    return info


def check_http_port(s: ServingConfig) -> None:
    """ServeError before deploying when Serve already runs on this cluster with another HTTP port.

    Serve fixes its proxy's host and port when it first starts on a cluster and ignores later ones
    with a log line: an app deployed for another port would answer there, and waiting for it at
    ``serving.port`` would run into the ready timeout."""
    try:
        from ray.serve.context import _get_global_client

        running = _get_global_client().http_config
    except (ImportError, AttributeError):  # Ray's private client moved: nothing to compare, deploy as before
        return
    if running.port != s.port:
        raise ServeError(f"Serve already runs on this Ray cluster with its HTTP proxy on port {running.port}, and "
                         f"serving.port is {s.port}: a cluster's Serve keeps the port it started with. Set "
                         f"serving.port={running.port}, or stop that Serve (`serve shutdown`, or `ray stop` for a "
                         "local cluster)")


def check_gate(home: Path, s: ServingConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Gate every model of ``s`` at its endpoint; a summary per model, or ServeError naming the setting."""
    try:
        results = gate.check_models(base_url(s), s.models, ModelStore(Path(home) / "models"), s.gate,
                                    engine_args(s), headers(s), progress)
    except gate.GateError as exc:
        raise ServeError(str(exc)) from None
    return {m: {"passed": r.passed, "agreeing": r.agreeing, "total": r.total, "mean_similarity": r.mean_similarity}
            for m, r in results.items()}


def remove_app() -> None:
    """Delete the application on the connected cluster and wait for its engines to exit here."""
    from ray import serve

    serve.delete(APP_NAME, _blocking=True)
    wait_engines_gone()


def local_engine_pids() -> list[int]:
    """vLLM engine processes on this machine (their titles start with ``VLLM::``)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(part.startswith("VLLM::") for part in (p.info["cmdline"] or [])[:1]):
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def wait_engines_gone(timeout_s: float = 120) -> bool:
    """Wait until removed replicas' vLLM processes on this machine have exited (False: still there)."""
    end = time.time() + timeout_s
    while time.time() < end:
        if not local_engine_pids():
            return True
        time.sleep(2)
    return False


def attach(cfg: ExperimentConfig) -> bool:
    """Join the running cluster (configured, RAY_ADDRESS, or local); False when there is none. A process
    already connected stays on its cluster (ray.init again would raise, and `down` would then remove nothing)."""
    import ray

    if ray.is_initialized():
        return True
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        cluster.join_quietly(address)
    except (ConnectionError, RuntimeError):
        return False
    return True


def down(cfg: ExperimentConfig) -> bool:
    from ray.serve.exceptions import RayServeException

    if not attach(cfg):
        return False
    try:
        remove_app()  # blocking, and the engines' memory and cores are free when it returns
    except RayServeException:  # Serve never started on this cluster: nothing to remove
        return False
    return True
