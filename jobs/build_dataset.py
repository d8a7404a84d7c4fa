"""Build the domain QA dataset on Ray Data (documents -> QA pairs -> quality -> review -> splits).

    python jobs/build_dataset.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/build_dataset.py --config configs/local.yaml \
        --set data.docs_dir=/shared/team-docs

The versioned dataset lands in <home>/datasets/<name>/<version>/ and in the MLflow run.
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("build_dataset")
