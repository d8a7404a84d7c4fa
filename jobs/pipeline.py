"""The main job: every stage built so far, in order, each tracked in MLflow.

    python jobs/pipeline.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/local.yaml
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("pipeline")
