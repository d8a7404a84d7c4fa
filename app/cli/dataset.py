"""``app dataset ...``: build and inspect the QA dataset (the review commands: app.cli.review)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from app.cli.common import ConfigOpt, SetOpt, console, handled, load

dataset_app = typer.Typer(help="The domain QA dataset: build, inspect, review.", no_args_is_help=True)


@dataset_app.command("build")
@handled
def dataset_build(config: ConfigOpt = None, set_: SetOpt = None,
                  docs: Optional[Path] = typer.Option(None, "--docs", help="Folder of your documents (sets data.docs_dir).")) -> None:
    """Build the QA dataset: chunks, extracted + LLM pairs, quality checks, reviews, leak-free splits."""
    from app.data.build import build_dataset

    cfg = load(config, set_)
    if docs:  # assigned, not passed as an override: a path is not YAML ("#", ": " would be parsed)
        cfg.data.docs_dir = str(docs.expanduser().resolve())
    console.print_json(data=build_dataset(cfg, config))


@dataset_app.command("show")
@handled
def dataset_show(config: ConfigOpt = None, set_: SetOpt = None,
                 version: Optional[str] = typer.Option(None, help="A version folder name; default: the latest build.")) -> None:
    """Counts, yield per generator and reject reasons of a build (its manifest)."""
    from app.datasets import DatasetError, datasets_root, latest_dataset

    cfg = load(config, set_)
    path = datasets_root(cfg) / version if version else latest_dataset(cfg)
    if not (path / "manifest.json").is_file():
        raise DatasetError(f"no manifest at {path}")
    m = json.loads((path / "manifest.json").read_text())
    console.print(f"{m['name']} {m['version']}  ({path})", highlight=False)
    table = Table("generator", "candidates", "accepted", "yield", "top reject reasons")
    for gen, st in m["quality"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in list(st["reject_reasons"].items())[:3])
        table.add_row(gen, str(st["candidates"]), str(st["accepted"]), f"{st['yield']:.1%}", reasons)
    console.print(table)
    splits = Table("topic", *m["counts"]["splits"])
    for topic, counts in sorted(m["counts"]["per_topic"].items()):
        splits.add_row(topic, *(str(counts.get(s, 0)) for s in m["counts"]["splits"]))
    splits.add_row("total", *(str(n) for n in m["counts"]["splits"].values()))
    console.print(splits)
    console.print(f"leakage overlaps: {m['leakage']['overlaps']}; skipped files: {len(m['documents']['skipped'])}")


@dataset_app.command("export-corpus")
@handled
def dataset_export_corpus(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Write the embedded knowledge base (Python's own docs) as Markdown files and print the folder."""
    from app.data.corpus import ensure_default_corpus

    cfg = load(config, set_)
    console.print(str(ensure_default_corpus(cfg.paths.resolved_home())), highlight=False)
