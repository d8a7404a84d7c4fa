"""Every benchmark of the endpoint: the load profiles, the sweep, the comparisons and the report.

    python jobs/benchmark.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/benchmark.py --config configs/local.yaml \
        --set "bench.profiles=[steady, stress]"

Deploys serving.models when the endpoint is not up (and removes them after); bench.target=ab needs
the experiment running (`app ab start`). Results in <home>/bench/ (Locust's CSV and HTML, sweep and
comparison JSON, report.md/html), each run tracked in MLflow.
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("benchmark")
