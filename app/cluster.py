"""Connecting to Ray: the cluster named by config or RAY_ADDRESS, else a local one started on demand."""

from __future__ import annotations

import os

from app.config import RayConfig

# Deferred imports: ray is imported inside the functions that use it,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.

# Whether this process's Ray connection forwards the cluster's worker output (progress lines of
# training workers, Ray Data tasks) to its own stdout. Serving commands connect without it (engine
# logs would flood them); a later stage that needs its workers' progress reconnects.
# None: this process connected some other way (left as it is).
_forwarding: dict[str, bool | None] = {"logs": None}


def join_quietly(address: str) -> None:
    """Join the cluster at ``address`` without forwarding its workers' output (serving commands:
    engine logs would flood them); a later :func:`connect` re-joins with forwarding."""
    import ray

    ray.init(address=address, log_to_driver=False)
    _forwarding["logs"] = False


def connect(cfg: RayConfig) -> dict[str, float]:
    """Initialise Ray once per process, forwarding worker output, and return the cluster's resources.

    Under ``ray job submit`` RAY_ADDRESS is set and the job joins that cluster; otherwise
    ``ray.init`` starts a local cluster that lives as long as this process (a cluster started
    with `ray start` is joined only when named, by ``ray.address: auto`` or RAY_ADDRESS). A connection made
    without log forwarding (``app serve up`` inside the pipeline) is re-made to the same cluster
    with it, so workers' progress shows in this job's output.
    """
    import ray

    if ray.is_initialized() and _forwarding["logs"] is False:
        address = ray.get_runtime_context().gcs_address
        ray.shutdown()
        ray.init(address=address, log_to_driver=True)
        _forwarding["logs"] = True
    elif not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        # "local": without it ray.init joins whatever /tmp/ray/ray_current_cluster names, a
        # cluster that may be long gone (a stale file fails the connection after a minute).
        kwargs = {"address": address} if address else {"address": "local", "num_cpus": cfg.num_cpus}
        ray.init(**kwargs, log_to_driver=True, include_dashboard=None if address else cfg.dashboard)
        _forwarding["logs"] = True
    return ray.cluster_resources()


def quiet_data_context() -> None:
    """Ray Data without progress bars or the execution banner: stages print their own progress."""
    from ray.data import (
        DataContext,  # deferred like every Ray import here: `app --help` must not load Ray
    )

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
