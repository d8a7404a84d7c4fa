"""Turning the best checkpoint into models people use: the LoRA adapter, a merged full checkpoint
in the model store (ready for vLLM and quantization), and a version in the MLflow model registry.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from app.config import PromptConfig
from app.generate import generate_batch
from app.prompts import qa_messages, truncate_context
from app.train import checkpoint as ck

# Deferred imports: mlflow, peft, torch, transformers are imported inside the functions that use them,
# for start-up time: the modules that import this one (other stages, the tests, Ray workers) must
# not pay for them until a function needs them.


def merge_adapter(ckpt: str, base_path: str, out_dir: str, dtype: str) -> dict[str, Any]:
    """Write base + adapter merged into ``out_dir`` (safetensors, tokenizer, generation config) and
    copy the adapter to ``out_dir/adapter``. Runs where the store is mounted (a Ray task on clusters)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    ckpt_dir, out = Path(ckpt), Path(out_dir)
    ck.check_adapter(ckpt_dir)
    # Merged in float32, then cast: bf16 rounding happens once, after B @ A is added.
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(ckpt_dir / ck.ADAPTER_DIR)).merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    merged.config.dtype = dtype
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    try:
        GenerationConfig.from_pretrained(base_path).save_pretrained(out)
    except OSError:
        pass  # the base has no generation_config.json: transformers' defaults apply to both
    shutil.copytree(ckpt_dir / ck.ADAPTER_DIR, out / "adapter")
    n = sum(p.numel() for p in merged.parameters())
    return {"parameters": n, "dtype": dtype}


class QAModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc model of a merged checkpoint: answers (question, context) rows greedily with the
    prompt format it was trained with. Needs the domain-llm package where it is loaded."""

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
        self.prompt = PromptConfig.model_validate(context.model_config.get("prompt", {}))
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 128))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        if "question" not in model_input:
            raise ValueError("input needs a 'question' column (and optionally 'context')")
        contexts = model_input["context"] if "context" in model_input else [None] * len(model_input)
        convs = [qa_messages(str(q), truncate_context(str(c), self.tokenizer, self.prompt.max_context_tokens)
                             if isinstance(c, str) and c else None, self.prompt)
                 for q, c in zip(model_input["question"], contexts)]
        return generate_batch(self.model, self.tokenizer, convs, self.max_new_tokens)


def register_in_mlflow(model_dir: Path, registered_name: str, prompt: dict[str, Any], max_new_tokens: int,
                       tags: dict[str, str]) -> dict[str, Any]:
    """Log the merged model as a pyfunc model of the active run and register a new version."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    # An explicit signature, not an input example: MLflow would load the model to run the example.
    signature = ModelSignature(inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context", required=False)]),
                               outputs=Schema([ColSpec("string")]))
    info = mlflow.pyfunc.log_model(
        name="model", python_model=QAModel(), artifacts={"model": str(model_dir)},
        model_config={"prompt": prompt, "max_new_tokens": max_new_tokens}, signature=signature,
        registered_model_name=registered_name, pip_requirements=["torch", "transformers", "domain-llm"],
        await_registration_for=60)
    version = info.registered_model_version
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(registered_name, str(version), k, v)
    return {"name": registered_name, "version": version, "model_uri": info.model_uri}
