"""The endpoint's API key: named by config (an environment variable or a file), read in one place,
never written or logged; secret-looking values redacted wherever a config is logged or written."""

import pytest
import yaml

from app.endpoint import headers, serving_key
from app.errors import ConfigError
from app.secrets import is_secret_name, redact
from app.serving.builder import serve_config_dict
from app.serving.config import ServingConfig


def test_key_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEY", "  k-123\n")
    s = ServingConfig(api_key_env="TEST_SERVE_KEY")
    assert serving_key(s) == "k-123"
    assert headers(s) == {"Authorization": "Bearer k-123"}
    monkeypatch.delenv("TEST_SERVE_KEY")
    with pytest.raises(ConfigError, match="serving.api_key_env names TEST_SERVE_KEY, which is not set"):
        serving_key(s)
    monkeypatch.setenv("TEST_SERVE_KEY", "   ")
    with pytest.raises(ConfigError, match="TEST_SERVE_KEY"):
        serving_key(s)


def test_key_from_a_file(tmp_path):
    f = tmp_path / "key"
    f.write_text("k-456\n")
    assert serving_key(ServingConfig(api_key_file=f)) == "k-456"
    f.write_text(" \n")
    with pytest.raises(ConfigError, match=f"serving.api_key_file {f} is empty"):
        serving_key(ServingConfig(api_key_file=f))
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"serving.api_key_file {missing} cannot be read"):
        serving_key(ServingConfig(api_key_file=missing))
    with pytest.raises(ConfigError, match="cannot be read"):
        serving_key(ServingConfig(api_key_file=tmp_path))  # a folder
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot be read"):
        serving_key(ServingConfig(api_key_file=f))


def test_no_key_source_means_an_open_endpoint():
    assert serving_key(ServingConfig()) is None and headers(ServingConfig()) == {}


@pytest.mark.parametrize("name", ["api_key", "apiKey", "API_KEY", "password", "db_password", "secret", "client_secret",
                                  "token", "hf_token", "access_token", "auth_token", "serving.engine_kwargs.hf_token",
                                  "aws_secret_access_key", "private_key", "credentials", "Authorization"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["api_key_env", "api_key_file", "data.generation.api_key_env", "token_file",
                                  "max_tokens", "max_new_tokens", "max_num_batched_tokens", "chunk_tokens",
                                  "tokenizer", "pad_token", "eos_token", "key", "model", "keywords", "host"])
def test_not_secret_names(name):
    assert not is_secret_name(name)


def test_redact_is_recursive_and_leaves_the_input_alone():
    raw = {"a": 1, "api_key": "s3cret", "nested": {"hf_token": "hf_x", "max_tokens": 5, "token": None},
           "list": [{"password": "pw", "ok": "yes"}, "plain"], "api_key_env": "KEY_VAR"}
    out = redact(raw)
    assert out == {"a": 1, "api_key": "***", "nested": {"hf_token": "***", "max_tokens": 5, "token": None},
                   "list": [{"password": "***", "ok": "yes"}, "plain"], "api_key_env": "KEY_VAR"}
    assert raw["api_key"] == "s3cret" and raw["list"][0]["password"] == "pw"
    assert redact({"serving.engine_kwargs.hf_token": "x", "serving.max_tokens": "3"}) == {
        "serving.engine_kwargs.hf_token": "***", "serving.max_tokens": "3"}


def test_serve_config_names_where_the_key_is_never_the_key(monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEY", "k-789")
    s = ServingConfig(models=["m"], host="0.0.0.0", api_key_env="TEST_SERVE_KEY",
                      engine_kwargs={"hf_token": "hf_secret", "seed": 1})
    doc = serve_config_dict("~/.domain_llm", s)
    text = yaml.safe_dump(doc)
    assert "k-789" not in text and "hf_secret" not in text
    serving = doc["applications"][0]["args"]["serving"]
    assert serving["api_key_env"] == "TEST_SERVE_KEY" and serving["engine_kwargs"] == {"hf_token": "***", "seed": 1}
    assert "api_key" not in serving


def test_a_config_with_a_secret_is_logged_redacted(monkeypatch):
    """What app.tracking.start_run logs: params and config.yaml of the redacted config."""
    import sys
    import types

    from app import tracking
    from app.config import load_config

    logged = {}

    class Run:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class FakeMlflow(types.ModuleType):  # records params and texts; any other call does nothing
        def __getattr__(self, name):
            return lambda *a, **kw: None

    fake = FakeMlflow("mlflow")
    fake.log_params = lambda p, *a, **kw: logged.update(params=p)
    fake.log_text = lambda text, name, *a, **kw: logged.setdefault("texts", {}).update({name: text})
    fake.start_run = lambda *a, **kw: Run()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setattr(tracking, "connect", lambda cfg: "file:///nowhere")
    cfg = load_config(None, ["serving.engine_kwargs={hf_token: hf_secret, seed: 3}"])
    with tracking.start_run(cfg, "test"):
        pass
    assert logged["params"]["serving.engine_kwargs.hf_token"] == "***"
    assert logged["params"]["serving.engine_kwargs.seed"] == "3"
    text = logged["texts"][tracking.CONFIG_ARTIFACT]
    assert "hf_secret" not in text
    assert yaml.safe_load(text)["serving"]["engine_kwargs"] == {"hf_token": "***", "seed": 3}
    # A config with nothing secret is logged exactly as it is.
    clean = load_config(None, [])
    with tracking.start_run(clean, "test"):
        pass
    assert logged["texts"][tracking.CONFIG_ARTIFACT] == clean.to_yaml()
