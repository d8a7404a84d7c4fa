"""``app dataset review ...``: the review web app, offline review files, and review statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from app.cli.common import ConfigOpt, HostOpt, PortOpt, SetOpt, console, handled, load
from app.cli.users import open_accounts

review_app = typer.Typer(help="Human review and correction of the dataset's QA pairs.", no_args_is_help=True)


def _store(config: Path | None, set_: list[str] | None):
    from app.data.review import ReviewStore

    cfg = load(config, set_)
    return ReviewStore(cfg.data.review_url(cfg.paths.resolved_home()))


@review_app.command("serve")
@handled
def review_serve(config: ConfigOpt = None, set_: SetOpt = None,
                 host: HostOpt = "127.0.0.1", port: PortOpt = 8765) -> None:
    """Serve the review page and its JSON API until Ctrl-C (reviewers log in with their accounts)."""
    from app.data.review_web import serve

    store, accounts = _store(config, set_), open_accounts(config, set_)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(f"review database: {store.url}", highlight=False, markup=False)
    console.print(f"accounts database: {accounts.url}", highlight=False, markup=False)
    if not any("reviewer" in u["roles"] or "admin" in u["roles"] for u in accounts.users() if not u["disabled_at"]):
        console.print("no reviewer account yet: create one with `app users add NAME --role reviewer`",
                      highlight=False, markup=False)
    console.print(f"review page: http://{shown}:{port}/", highlight=False, markup=False)
    serve(store, accounts, host, port)


@review_app.command("export")
@handled
def review_export(path: Path, config: ConfigOpt = None, set_: SetOpt = None,
                  status: Optional[str] = typer.Option(None, help="Only items of this status "
                                                                  "(pending, approved, edited, rejected).")) -> None:
    """Write the items to a JSONL file for offline review (edit it, then `import` it)."""

    n = _store(config, set_).export_jsonl(path, status=status)
    console.print(f"exported {n} items to {path}", highlight=False, markup=False)


@review_app.command("import")
@handled
def review_import(path: Path, config: ConfigOpt = None, set_: SetOpt = None,
                  reviewer: str = typer.Option(..., help="The account (reviewer role) recorded for every change.")
                  ) -> None:
    """Apply a reviewed JSONL file: all lines are checked first, then applied together or not at all.

    The changes are recorded as the named account's: whoever can run this command can write the
    database files anyway, so it asks for no password, but the account must exist, be enabled and
    have the reviewer role."""
    from app.errors import AppError

    user = open_accounts(config, set_).get(reviewer)
    if not user.can("reviewer"):
        raise AppError(f"account {user.name!r} lacks the reviewer role")
    counts = _store(config, set_).import_jsonl(path, reviewer=user.name, user_id=user.id)
    console.print(f"imported {path}: {counts['changed']} changed, {counts['unchanged']} unchanged "
                  f"({counts['lines']} lines)", highlight=False, markup=False)


@review_app.command("stats")
@handled
def review_stats(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Items by status, by generator and by topic."""
    from app.data.review import STATUSES

    stats = _store(config, set_).stats()
    by_status = stats["by_status"]
    console.print(f"{stats['total']} items, {stats['events']} review events: "
                  + ", ".join(f"{s} {by_status[s]}" for s in STATUSES), highlight=False, markup=False)
    for title, key in (("generator", "by_generator"), ("topic", "by_topic")):
        if not stats[key]:
            continue
        table = Table(title, *STATUSES, "total")
        for name, counts in stats[key].items():
            table.add_row(Text(name or "-"), *(str(counts[s]) for s in STATUSES), str(sum(counts.values())))
        console.print(table)


@review_app.command("show")
@handled
def review_show(pair_id: str, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """One item and its full review history."""

    store = _store(config, set_)
    item, history = store.get(pair_id), store.history(pair_id)
    table = Table("field", "value", show_header=False)
    for key, value in item.items():
        table.add_row(key, Text("" if value is None else str(value)))
    console.print(table)
    if not history:
        console.print("no review events", highlight=False, markup=False)
        return
    events = Table("when (UTC)", "reviewer", "action", "status", "change", "note", title="history")
    for ev in history:
        change = []
        for field in ("question", "answer"):
            if ev[f"{field}_before"] != ev[f"{field}_after"]:
                change.append(f"{field}: {ev[f'{field}_before']!r} -> {ev[f'{field}_after']!r}")
        events.add_row(ev["created_at"], Text(ev["reviewer"]), ev["action"],
                       f"{ev['status_before']} -> {ev['status_after']}", Text("\n".join(change)), Text(ev["note"]))
    console.print(events)
