"""The A/B commands' checks before any work: arms in the store, the public name, the live split."""

import pytest

from app.ab.run import AbRunError, preflight, set_split, status
from app.ab.store import ExperimentStore
from app.config import load_config


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAIN_LLM_HOME", str(tmp_path))  # an integration session may have set its own
    return load_config(None, [f"paths.home={tmp_path}", "serving.port=1"])


def test_arms_missing_from_the_store_are_named(cfg):
    with pytest.raises(AbRunError, match=r"not in the model store: base -> smollm2-135m-instruct, finetuned -> "
                                         r"smollm2-135m-instruct-lora"):
        preflight(cfg)


def test_the_experiment_app_refuses_arms_it_does_not_serve_and_a_public_name_that_is_a_model(tmp_path):
    from app.ab.deployment import build_app

    arms = [{"name": "a", "model": "m1", "weight": 0.5}, {"name": "b", "model": "m2", "weight": 0.5}]
    args = {"home": str(tmp_path), "serving": {"models": ["m1"]}, "ab": {"arms": arms, "baseline": "a"}}
    with pytest.raises(ValueError, match=r"ab.arms serve \['m2'\]"):
        build_app(args)
    args = {"home": str(tmp_path), "serving": {"models": ["m1", "m2"]},
            "ab": {"arms": arms, "baseline": "a", "public_model": "m1"}}
    with pytest.raises(ValueError, match="also a served model's name"):
        build_app(args)


def test_a_split_must_name_every_arm_and_sum_to_one(cfg, tmp_path):
    with pytest.raises(AbRunError, match="weight to each arm"):
        set_split(cfg, {"base": 1.0})
    with pytest.raises(AbRunError, match="sum to 1"):
        set_split(cfg, {"base": 0.7, "finetuned": 0.7})
    with pytest.raises(AbRunError, match=r"\[0, 1\]"):
        set_split(cfg, None, shadow_fraction=2)
    with pytest.raises(AbRunError, match="ab.shadow.enabled"):
        set_split(cfg, None, shadow_fraction=0.5)
    out = set_split(cfg, {"base": 0.2, "finetuned": 0.8}, "ramp-up")
    assert out["weights"] == {"base": 0.2, "finetuned": 0.8}
    store = ExperimentStore(f"sqlite:///{tmp_path / 'ab.db'}")
    assert store.latest_split("ft-vs-base")["weights"] == {"base": 0.2, "finetuned": 0.8}
    store.close()


def test_status_says_when_the_service_is_not_running(cfg):
    out = status(cfg)
    assert "not reachable" in out["service"] and out["served_requests_per_arm"] == {}
