"""The main job: the stages in order under one MLflow parent run, unchanged stages reused from their
records (so a killed run continues where it stopped), then the acceptance table.

    python jobs/pipeline.py --config configs/local.yaml [--from STAGE] [--to STAGE] [--only STAGE] [--force STAGE]
    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/local.yaml
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("pipeline")
