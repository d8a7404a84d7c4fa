import pytest

from app.train.config import TrainingConfig
from app.train.engine import deepspeed_config, lr_lambda, warmup_steps


def test_cosine_schedule_warms_up_then_decays_to_zero():
    t = TrainingConfig(max_steps=100, warmup_ratio=0.1, scheduler="cosine")
    f = lr_lambda(t)
    assert warmup_steps(t) == 10
    assert f(0) == pytest.approx(1 / 11)
    assert f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)          # half way through the decay
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_linear_and_constant_schedules():
    lin = lr_lambda(TrainingConfig(max_steps=20, warmup_ratio=0.0, scheduler="linear"))
    assert [round(lin(s), 3) for s in (0, 10, 20)] == [1.0, 0.5, 0.0]
    const = lr_lambda(TrainingConfig(max_steps=20, warmup_ratio=0.25, scheduler="constant"))
    assert const(2) < 1.0 and const(5) == const(19) == 1.0


def test_deepspeed_config_follows_the_section():
    t = TrainingConfig(micro_batch_size=4, grad_accum_steps=3, zero_stage=3, grad_clip=None, offload_optimizer=True)
    ds = deepspeed_config(t, "bf16", world_size=2)
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["gradient_clipping"] == 0.0
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero0 = deepspeed_config(TrainingConfig(zero_stage=0), "fp32", 1)
    assert zero0["zero_optimization"] == {"stage": 0} and not zero0["bf16"]["enabled"]
