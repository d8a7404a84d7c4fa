"""A bounded Locust load run of the running endpoint (bench.load.profile), tracked in MLflow.

    python jobs/benchmark.py --config configs/local.yaml --set bench.load.profile=step
    ray job submit --working-dir . -- python jobs/benchmark.py --config configs/local.yaml

The endpoint must be up (`app serve up`, or `app ab start` with bench.target=ab). Results in
<home>/bench/load/<stamp>-<profile>/ (Locust's CSV and HTML, memory samples, summary.json).
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("bench_load")
