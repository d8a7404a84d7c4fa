"""Engine arguments of the serving section: the measured CPU default and what the sweep's baseline sends."""

from pathlib import Path

from app.serving.config import ServingConfig, VLLM_DEFAULTS
from app.serving.builder import engine_args, vllm_server_command


def test_default_is_bf16_compiled_with_vllms_own_kernel_choice():
    e = engine_args(ServingConfig())
    assert e["dtype"] == "bfloat16" and "enforce_eager" not in e and "compilation_config" not in e


def test_gpu_keeps_vllms_defaults_and_memory_share():
    e = engine_args(ServingConfig(accelerator="gpu", cpu_kernels="torch"))
    assert "enforce_eager" not in e and "compilation_config" not in e  # CPU kernel choice ignored on GPUs
    assert e["gpu_memory_utilization"] == 0.9


def test_vllm_defaults_trial_sends_no_scheduling_knobs_but_the_same_dtype():
    e = engine_args(ServingConfig.model_validate(ServingConfig().model_dump() | VLLM_DEFAULTS))
    assert "enforce_eager" not in e and "compilation_config" not in e
    assert "max_num_seqs" not in e and e["dtype"] == "bfloat16"  # same work as the other trials


def test_explicit_modes_and_user_compilation_settings():
    e = engine_args(ServingConfig(engine_mode="eager", cpu_kernels="torch"))
    assert e["enforce_eager"] is True and e["compilation_config"] == {"custom_ops": ["none"]}
    e = engine_args(ServingConfig(engine_mode="eager", cpu_kernels="vllm"))
    assert e["compilation_config"] == {"custom_ops": ["all"]}
    # engine_kwargs wins key by key, keeping the kernel choice unless it names custom_ops itself.
    e = engine_args(ServingConfig(cpu_kernels="torch", engine_kwargs={"compilation_config": {"mode": 0}}))
    assert e["compilation_config"] == {"custom_ops": ["none"], "mode": 0}
    e = engine_args(ServingConfig(cpu_kernels="torch", engine_kwargs={"compilation_config": {"custom_ops": ["all"]},
                                                                      "seed": 3}))
    assert e["compilation_config"] == {"custom_ops": ["all"]} and e["seed"] == 3


def test_plain_vllm_server_gets_the_same_arguments():
    cmd = vllm_server_command("m", Path("/models/m"), ServingConfig(engine_mode="eager", cpu_kernels="torch"), 8123)
    assert "--enforce-eager" in cmd and cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert cmd[cmd.index("--compilation-config") + 1] == '{"custom_ops": ["none"]}'
