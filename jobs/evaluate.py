"""Evaluate several models on the test split (or a JSONL of questions): metrics with bootstrap
intervals, paired tests against the first model, per-topic breakdowns, a Markdown/HTML report.

    python jobs/evaluate.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/local.yaml \
        --set evaluation.test_set=/data/questions.jsonl --set evaluation.run_name=human-questions

Default models: the base model and the fine-tuned one (training.output_model), served by the
project's vLLM-on-Ray-Serve app; results in <home>/eval/<run>/ and in MLflow.
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("evaluate")
