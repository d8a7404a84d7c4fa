"""``app model ...``: the local model store."""

from __future__ import annotations

import typer
from rich.table import Table

from app.cli.common import ConfigOpt, SetOpt, console, handled, load

model_app = typer.Typer(help="The local model store.", no_args_is_help=True)


@model_app.command("prepare")
@handled
def model_prepare(config: ConfigOpt = None, set_: SetOpt = None,
                  force: bool = typer.Option(False, help="Rebuild the store entry even if present.")) -> None:
    """Put the configured base model into the store, probe it on a Ray worker, track it in MLflow."""
    from app.model_store import model_store
    from app.prepare.run import prepare_model

    cfg = load(config, set_)
    if force:
        model_store(cfg).prepare(cfg.model, force=True)
    summary = prepare_model(cfg, config)
    console.print_json(data=summary)


@model_app.command("list")
@handled
def model_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Models in the store."""
    from app.model_store import model_store

    cfg = load(config, set_)
    table = Table("name", "kind", "source / parent", "path", "created")
    for m in model_store(cfg).list():
        table.add_row(m.name, m.kind, str(m.manifest.get("source") or m.manifest.get("parent") or ""), str(m.path),
                      m.manifest.get("created", ""))
    console.print(table)


@model_app.command("verify")
@handled
def model_verify(name: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check a stored model's files against the sha256 digests in its manifest."""
    from app.model_store import model_store

    cfg = load(config, set_)
    m = model_store(cfg).get(name, verify=True)
    console.print(f"{name}: {len(m.manifest.get('files', {}))} files match their digests")


@model_app.command("ask")
@handled
def model_ask(question: str, config: ConfigOpt = None, set_: SetOpt = None,
              max_new_tokens: int = typer.Option(64, min=1)) -> None:
    """Greedy answer from the configured model (Hugging Face generate; a quick check, not serving)."""
    from app.generate import answer_questions
    from app.model_store import model_store

    cfg = load(config, set_)
    stored = model_store(cfg).resolve(cfg.model)
    a = answer_questions(stored.path, [question], max_new_tokens, cfg.model.dtype)[0]
    console.print(a.answer, highlight=False, markup=False)
