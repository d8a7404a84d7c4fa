"""``app ab ...``: shadow and A/B experiments behind one public model name (app.ab)."""

from __future__ import annotations

from typing import Optional

import typer

from app.cli.common import ConfigOpt, HostOpt, PortOpt, SetOpt, console, handled, load, run_stage, say

ab_app = typer.Typer(help="Shadow and A/B tests on Ray Serve: start, status, split, report, simulate, dashboard, "
                     "stop, run.", no_args_is_help=True)


@ab_app.command("start")
@handled
def ab_start(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Deploy the arms behind the traffic-splitting ingress; show the power analysis first."""
    from app.ab.run import start

    console.print_json(data=start(load(config, set_), say))


@ab_app.command("status")
@handled
def ab_status(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The running experiment's split and counters, and the requests stored per arm."""
    from app.ab.run import status

    console.print_json(data=status(load(config, set_)))


@ab_app.command("split")
@handled
def ab_split(weights: Optional[list[str]] = typer.Argument(None, help="ARM=WEIGHT for every arm, summing to 1 "
                                                                        "(none: keep the current weights)."),
             shadow: Optional[float] = typer.Option(None, help="Share of the baseline's requests also sent to the "
                                                    "shadow arm (needs ab.shadow.enabled at start)."),
             reason: str = typer.Option("set by hand", help="Why (kept with the change)."),
             config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Change the live split (every ingress replica applies it within seconds; nothing restarts)."""
    from app.ab.run import AbRunError, set_split

    parsed: dict[str, float] | None = {} if weights else None
    for item in weights or []:
        arm, sep, value = item.partition("=")
        try:
            parsed[arm] = float(value) if sep else float("nan")
        except ValueError:
            raise AbRunError(f"expected ARM=WEIGHT, got {item!r}") from None
        if not sep:
            raise AbRunError(f"expected ARM=WEIGHT, got {item!r}")
    console.print_json(data=set_split(load(config, set_), parsed, reason, shadow))


@ab_app.command("report")
@handled
def ab_report(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Score, analyse and decide; write report.json/.md and dashboard.html; log them to MLflow."""
    from app.ab.run import report

    result = report(load(config, set_), config, progress=say)
    console.print_json(data={k: result[k] for k in ("experiment", "decisions", "per_arm", "srm", "power", "files",
                                                    "mlflow_run_id") if k in result})


@ab_app.command("simulate")
@handled
def ab_simulate(config: ConfigOpt = None, set_: SetOpt = None,
                users: Optional[int] = typer.Option(None, help="Default: ab.simulation.users."),
                budget_s: Optional[float] = typer.Option(None, help="Default: ab.simulation.budget_s.")) -> None:
    """Drive the running experiment with simulated users (feedback from the evaluation's rule, with noise)."""
    from app.ab.run import simulate

    cfg = load(config, set_)
    sim = cfg.ab.simulation
    result = simulate(cfg, users or sim.users, sim.questions_per_user, sim.noise, sim.concurrency,
                      budget_s or sim.budget_s, sim.look_every_s, config, say)
    console.print_json(data=result)


@ab_app.command("run")
@handled
def ab_run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The whole stage as jobs/ab_test.py runs it: start, simulate, report, stop."""
    console.print_json(data=run_stage("ab_test", config, set_))


@ab_app.command("stop")
@handled
def ab_stop(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Remove the experiment's application (the database keeps every event)."""
    from app.ab.run import stop

    say("removed" if stop(load(config, set_)) else "no Serve application was running")


@ab_app.command("dashboard")
@handled
def ab_dashboard(config: ConfigOpt = None, set_: SetOpt = None, host: HostOpt = "127.0.0.1",
                 port: PortOpt = 8767) -> None:
    """Serve the results dashboard until Ctrl-C (accounts with the analyst role log in)."""
    from app.ab.run import dashboard_app
    from app.web import serve_app

    cfg = load(config, set_)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    say(f"A/B dashboard: http://{shown}:{port}/ (log in with an analyst account: `app users add NAME --role analyst`)")
    serve_app(dashboard_app(cfg), host, port)


__all__ = ["ab_app"]
