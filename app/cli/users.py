"""``app users ...``: the accounts that may write (reviewers, annotators, admins); see app.accounts."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from app.cli.common import ConfigOpt, SetOpt, console, handled, load, say

users_app = typer.Typer(help="Accounts of reviewers, annotators and admins (hashed passwords, roles).",
                        no_args_is_help=True)

RoleOpt = typer.Option(..., "--role", "-r", help="reviewer, annotator, analyst (A/B dashboard) or admin (repeatable).")
StdinOpt = typer.Option(False, "--password-stdin", help="Read the password from the first line of stdin "
                                                        "(scripts); else it is asked for, twice, unseen.")


def open_accounts(config: Path | None, set_: list[str] | None):
    """The accounts store of the config (``accounts.db``, SQLite under the home by default)."""
    from app.accounts import AccountStore

    cfg = load(config, set_)
    return AccountStore(cfg.accounts.url(cfg.paths.resolved_home()), session_hours=cfg.accounts.session_hours)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
@handled
def users_add(name: str, role: list[str] = RoleOpt, password_stdin: bool = StdinOpt,
              config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Create an account with a password and roles."""
    accounts = open_accounts(config, set_)
    user = accounts.add(name, _password(password_stdin), role)
    say(f"added account {user.name} ({', '.join(user.roles)}) to {accounts.url}")


@users_app.command("passwd")
@handled
def users_passwd(name: str, password_stdin: bool = StdinOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Set a new password (the account's sessions are closed)."""
    open_accounts(config, set_).set_password(name, _password(password_stdin))
    say(f"password of {name} changed; its sessions are closed")


@users_app.command("roles")
@handled
def users_roles(name: str, role: list[str] = RoleOpt, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Replace an account's roles."""
    user = open_accounts(config, set_).set_roles(name, role)
    say(f"{user.name}: {', '.join(user.roles)}")


@users_app.command("disable")
@handled
def users_disable(name: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Disable an account (its sessions are closed; its past actions keep its name)."""
    open_accounts(config, set_).set_disabled(name, True)
    say(f"{name} disabled")


@users_app.command("enable")
@handled
def users_enable(name: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Enable a disabled account again."""
    open_accounts(config, set_).set_disabled(name, False)
    say(f"{name} enabled")


@users_app.command("list")
@handled
def users_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Every account with its roles."""
    table = Table("name", "roles", "created (UTC)", "disabled")
    for u in open_accounts(config, set_).users():
        table.add_row(u["name"], ", ".join(u["roles"]), (u["created_at"] or "")[:19], (u["disabled_at"] or "")[:19])
    console.print(table)
