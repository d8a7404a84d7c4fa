"""``app eval ...``: evaluation runs, comparisons and human evaluation."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from app.cli.common import (
    ConfigOpt,
    HostOpt,
    PortOpt,
    SetOpt,
    console,
    handled,
    load,
    run_stage,
    say,
)

eval_app = typer.Typer(help="Evaluation: many models on one test set, intervals, paired tests, reports.", no_args_is_help=True)


@eval_app.command("run")
@handled
def eval_run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Answer the test set (or evaluation.test_set) with every model; metrics, intervals, paired tests, report."""
    console.print_json(data=run_stage("evaluate", config, set_))


@eval_app.command("compare")
@handled
def eval_compare(run: Annotated[Optional[str], typer.Argument(help="Evaluation run (default: the latest).")] = None,
                 config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Side-by-side table of an evaluation run: every metric per model with intervals, and the paired tests."""
    from app.eval.report import tables
    from app.eval.run import load_summary

    cfg = load(config, set_)
    name, summary = load_summary(cfg, run)
    t = tables(summary)
    console.print(f"evaluation {name}: {summary['examples']} examples, {summary['confidence']:.0%} bootstrap "
                  f"intervals, paired tests against {summary['reference']}", highlight=False)
    for title, key in (("metrics", "means"), ("paired comparisons", "comparisons"), ("by topic", "by_topic")):
        df = t[key]
        table = Table(*map(str, df.columns), title=title)
        for row in df.itertuples(index=False):
            table.add_row(*map(str, row))
        console.print(table)


human_app = typer.Typer(help="Human evaluation: studies, the rating page, agreement.", no_args_is_help=True)
eval_app.add_typer(human_app, name="human")


@human_app.command("create")
@handled
def human_create(study: str, annotators: Annotated[str, typer.Option(help="Comma-separated annotator names.")],
                 run: Annotated[Optional[str], typer.Option(help="Evaluation run (default: the latest).")] = None,
                 config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """A blind study over an evaluation run's answers. Annotators that are accounts (annotator role, `app users
    add`) log in with their password; each other annotator's login token is printed (shown once)."""
    from app.eval.run import create_study

    cfg = load(config, set_)
    console.print_json(data=create_study(cfg, study, [a for a in annotators.split(",") if a.strip()], run))


@human_app.command("serve")
@handled
def human_serve(config: ConfigOpt = None, set_: SetOpt = None,
                host: HostOpt = "127.0.0.1", port: PortOpt = 8766) -> None:
    """Serve the rating page until Ctrl-C."""
    from app.cli.users import open_accounts
    from app.eval.human_web import serve
    from app.eval.run import human_store

    cfg = load(config, set_)
    store, accounts = human_store(cfg), open_accounts(config, set_)
    console.print(f"ratings database: {store.url}\naccounts database: {accounts.url}\n"
                  f"rating page: http://{host}:{port}/login", highlight=False, markup=False)
    serve(store, accounts, host, port)


@human_app.command("status")
@handled
def human_status(study: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Ratings done per annotator."""
    from app.eval.run import human_store

    console.print_json(data=human_store(load(config, set_)).status(study))


@human_app.command("report")
@handled
def human_report(study: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Agreement (Krippendorff, Cohen, Fleiss), human scores per model, correlation with the metrics; into the report."""
    from app.eval.run import human_results

    result = human_results(load(config, set_), study, progress=say)
    console.print_json(data={k: result[k] for k in ("study", "eval_run", "report", "ratings", "annotators", "agreement")})
