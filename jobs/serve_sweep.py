"""Serving-parameter sweep: deploy each setting on Ray Serve, load it, keep the best under the SLO.

    python jobs/serve_sweep.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/serve_sweep.py --config configs/local.yaml \
        --set 'serve_sweep.grid={max_num_seqs: [16, 64]}'

Takes over the cluster's Serve application named "llm" while it runs and removes it at the end.
The winner's Serve config lands in <home>/reports/serve_sweep/<time>/ and in the MLflow run.
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("serve_sweep")
