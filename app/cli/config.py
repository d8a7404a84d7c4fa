"""``app config ...``: show and validate experiment configs."""

from __future__ import annotations

import json

import typer

from app.cli.common import ConfigOpt, SetOpt, console, handled, load

config_app = typer.Typer(help="Show and validate experiment configs.", no_args_is_help=True)


@config_app.command("show")
@handled
def config_show(config: ConfigOpt = None, set_: SetOpt = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the resolved config (defaults + file + overrides) and its content hash."""
    cfg = load(config, set_)
    console.print(json.dumps(cfg.to_dict(), indent=2) if as_json else cfg.to_yaml(), highlight=False, markup=False)
    console.print(f"# config hash: {cfg.content_hash()}", highlight=False, markup=False)


@config_app.command("validate")
@handled
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate a config; also check LoRA target modules against the model if it is in the store."""
    from app.model_store import ModelStoreError, check_target_modules, model_store

    cfg = load(config, set_)
    store = model_store(cfg)
    try:
        stored = store.get(cfg.model.name)
    except ModelStoreError:
        console.print(f"valid (hash {cfg.content_hash()[:12]}); LoRA target modules not checked: model "
                      f"{cfg.model.name!r} is not in the store yet (`app model prepare`)")
        return
    check_target_modules(cfg.lora.target_modules, stored.path)
    console.print(f"valid (hash {cfg.content_hash()[:12]}); LoRA target modules exist in {cfg.model.name}")
