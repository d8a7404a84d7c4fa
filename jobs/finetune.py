"""Fine-tune LoRA adapters on Ray Train + DeepSpeed; export, register and compare the best checkpoint.

    python jobs/finetune.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/finetune.py --config configs/local.yaml \
        --set training.lr=1e-4 --set training.run_name=lr-1e-4

Running it again with the same settings (or the same training.run_name) resumes from the latest
checkpoint under <home>/train/<run>/; the merged model lands in the model store as <model>-lora.
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("finetune")
