"""Reading runs back: side-by-side comparison and metric plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.tracking import HASH_TAG, STAGE_TAG, TrackingError

# Deferred imports: matplotlib, mlflow are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


@dataclass
class Comparison:
    run_ids: list[str]
    header: list[str]          # one column per run
    rows: list[list[str]]      # [label, value per run]
    histories: dict[str, dict[str, list[tuple[int, float]]]]  # metric -> run -> [(step, value)]


def compare_runs(run_ids: list[str], all_params: bool = False) -> Comparison:
    """Identity, params that differ (all with ``all_params``) and latest metrics of each run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    runs = []
    for rid in run_ids:
        try:
            runs.append(client.get_run(rid))
        except MlflowException as exc:
            raise TrackingError(f"run {rid!r} not found: {exc.message}") from None

    def cell(d: dict[str, Any], k: str) -> str:
        v = d.get(k)
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    rows: list[list[str]] = [
        ["run name"] + [r.info.run_name or "" for r in runs],
        ["stage"] + [r.data.tags.get(STAGE_TAG, "-") for r in runs],
        ["status"] + [r.info.status for r in runs],
        ["config hash"] + [r.data.tags.get(HASH_TAG, "-")[:12] for r in runs],
        ["git commit"] + [r.data.tags.get("git.commit", "-")[:10] for r in runs],
    ]
    param_keys = sorted(set().union(*(r.data.params for r in runs)))
    for k in param_keys:
        values = [r.data.params.get(k, "-") for r in runs]
        if all_params or len(set(values)) > 1:
            rows.append([f"param {k}"] + values)
    metric_keys = sorted(set().union(*(r.data.metrics for r in runs)))
    for k in metric_keys:
        rows.append([f"metric {k}"] + [cell(r.data.metrics, k) for r in runs])
    histories = {
        k: {r.info.run_id: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
            for r in runs if k in r.data.metrics}
        for k in metric_keys
    }
    return Comparison(run_ids=[r.info.run_id for r in runs], header=[r.info.run_id[:8] for r in runs],
                      rows=rows, histories=histories)


def plot_comparison(comp: Comparison, out: Path) -> Path:
    """One panel per metric: a line per run over steps, or bars where each run has one value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted(comp.histories)
    if not metrics:
        raise TrackingError("the runs have no metrics to plot")
    cols = min(3, len(metrics))
    nrows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        series = comp.histories[metric]
        if all(len(points) <= 1 for points in series.values()):
            labels = [rid[:8] for rid in series]
            ax.bar(labels, [points[-1][1] if points else 0.0 for points in series.values()])
        else:
            for rid, points in series.items():
                ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=rid[:8])
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        ax.set_title(metric, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
