"""The ``app`` command line: one module per command group, each command validates the config
first, then calls one function. Errors are handled once (``app.cli.common.handled``).

Deferred imports: the command modules import the stage modules (and with them Ray, pandas, torch,
SQLAlchemy, FastAPI) inside the commands, for start-up time: `app --help` must stay under 2 s
(tests/unit/test_layers.py checks that it loads none of them).
"""

from __future__ import annotations

import sys

import typer

from app.cli.ab import ab_app
from app.cli.bench import bench_app
from app.cli.config import config_app
from app.cli.dataset import dataset_app
from app.cli.eval import eval_app
from app.cli.model import model_app
from app.cli.pipeline import pipeline_app
from app.cli.review import review_app
from app.cli.runs import runs_app
from app.cli.serve import serve_app
from app.cli.tracking import tracking_app
from app.cli.quantize import quantize_app
from app.cli.train import train_app
from app.cli.users import users_app

app = typer.Typer(help="Customize an LLM for a domain knowledge base on Ray, and prove it helped.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(tracking_app, name="tracking")
app.add_typer(runs_app, name="runs")
app.add_typer(serve_app, name="serve")
app.add_typer(dataset_app, name="dataset")
dataset_app.add_typer(review_app, name="review", help="Human review of QA pairs: web page, JSONL export/import.")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(quantize_app, name="quantize")
app.add_typer(ab_app, name="ab")
app.add_typer(bench_app, name="bench")
app.add_typer(users_app, name="users")
app.registered_commands += pipeline_app.registered_commands  # `app run`, `app rerun` at the top level


def main() -> None:
    # Progress lines must show up as they happen in logs and pipes too (block-buffered otherwise).
    sys.stdout.reconfigure(line_buffering=True)
    app()


if __name__ == "__main__":
    sys.exit(main())
