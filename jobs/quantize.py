"""INT4 variants of the fine-tuned model (AWQ and GPTQ through llm-compressor, QAT on Ray Train),
evaluated against the bf16 model and analysed layer by layer.

    python jobs/quantize.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/quantize.py --config configs/local.yaml \
        --set quantize.methods='[gptq]' --set quantize.qat=false

Calibration runs in the quantization environment (.venv-quant, made by scripts/bootstrap.sh; on a
cluster set quantize.python or DOMAIN_LLM_QUANT_PYTHON to its interpreter on the node that runs
the job). The variants land in the model store as <model>-<method>-w4g<group>[-asym].
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("quantize")
