"""The domain QA dataset: corpus ingestion, extraction and LLM generation, quality checks, review, splits."""
