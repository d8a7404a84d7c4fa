"""Connecting to Ray: the cluster named by config or RAY_ADDRESS, else a local one started on demand."""

from __future__ import annotations

import os

from app.config import RayConfig


def connect(cfg: RayConfig) -> dict[str, float]:
    """Initialise Ray once per process and return the cluster's resources.

    Under ``ray job submit`` RAY_ADDRESS is set and the job joins that cluster; otherwise
    ``ray.init`` starts a local cluster that lives as long as this process.
    """
    import ray

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        kwargs = {"address": address} if address else {"num_cpus": cfg.num_cpus}
        ray.init(**kwargs, log_to_driver=True, include_dashboard=None if address else cfg.dashboard)
    return ray.cluster_resources()
