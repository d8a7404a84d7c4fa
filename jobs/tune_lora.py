"""Ray Tune search over LoRA rank, alpha and learning rate; each trial a short Ray Train run.

    python jobs/tune_lora.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/tune_lora.py --config configs/local.yaml \
        --set tune.num_samples=8 --set tune.max_concurrent_trials=4

Prints the best trial's settings as --set overrides for `jobs/finetune.py`.
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("tune_lora")
