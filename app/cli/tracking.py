"""``app tracking ...``: the MLflow tracking server."""

from __future__ import annotations

import typer

from app.cli.common import ConfigOpt, SetOpt, console, handled, load

tracking_app = typer.Typer(help="The MLflow tracking server.", no_args_is_help=True)


@tracking_app.command("up")
@handled
def tracking_up(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Start the local MLflow server (SQLite backend, local artifact root) if it is not running."""
    from app.tracking import ensure_server

    cfg = load(config, set_)
    uri = ensure_server(cfg.tracking, cfg.paths.resolved_home())
    console.print(f"MLflow tracking server: {uri}")


@tracking_app.command("status")
@handled
def tracking_status(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Where runs are tracked and whether the server answers."""
    from app.tracking import server_status

    cfg = load(config, set_)
    console.print_json(data=server_status(cfg.tracking, cfg.paths.resolved_home()))


@tracking_app.command("down")
@handled
def tracking_down(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Stop the local MLflow server this app started (the database and artifacts stay)."""
    from app.tracking import stop_server

    cfg = load(config, set_)
    console.print("stopped" if stop_server(cfg.paths.resolved_home()) else "no server started by this app")
