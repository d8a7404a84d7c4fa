"""Put the base model into the store, probe it on a Ray worker, and track it in MLflow.

    python jobs/prepare_model.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/prepare_model.py --config configs/local.yaml --set model.dtype=float32
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("prepare_model")
