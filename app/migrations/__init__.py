"""Schema migrations (Alembic) of the databases people write to: accounts, dataset review, human ratings, A/B experiments.

Each database has its own script folder here (``accounts/``, ``review/``, ``human/``, ``ab/``) and its own
version table (``alembic_version_<name>``), so they may share one database server or file.
:func:`upgrade` brings a database to the newest schema when it is opened (``app.db.open_database``):
a new database gets every migration; a database created before migrations existed (its tables made by
``create_all``, no version table) is stamped at the first revision, which describes exactly that
schema, and then upgraded, so its rows are kept.

Adding a change: a new file in ``<name>/versions/`` with ``down_revision`` set to the current head
(``alembic`` can write it: ``alembic -x ... revision``, or by hand as the existing ones are), and a
test that opens a database of the previous revision with rows in it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

HERE = Path(__file__).resolve().parent
BASELINE = "0001"  # every chain's first revision: the schema as it was before migrations


def _config(name: str, connection=None):
    from alembic.config import Config  # deferred: opening a database is the only user

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / name))
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = f"alembic_version_{name}"
    return cfg


def upgrade(engine: Engine, name: str, tables: set[str]) -> None:
    """Bring ``engine``'s database to the head of the ``name`` chain; ``tables`` are that chain's tables
    (used to recognise a database created before migrations)."""
    from alembic import command

    with engine.begin() as connection:
        cfg = _config(name, connection)
        present = set(inspect(connection).get_table_names())
        if cfg.attributes["version_table"] not in present and present & tables:
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")


def current(engine: Engine, name: str) -> str | None:
    """The revision ``engine``'s database is at in the ``name`` chain (None: not under migrations)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        ctx = MigrationContext.configure(connection, opts={"version_table": f"alembic_version_{name}"})
        return ctx.get_current_revision()


def head(name: str) -> str:
    """The newest revision of the ``name`` chain."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(name)).get_current_head()


def run_env(context) -> None:
    """The body of every chain's env.py: migrate on the connection :func:`upgrade` shares."""
    cfg = context.config
    connection = cfg.attributes.get("connection")
    if connection is None:
        raise RuntimeError("these migrations run through app.migrations.upgrade (app.db.open_database), "
                           "which passes the database connection")
    context.configure(connection=connection, version_table=cfg.attributes["version_table"],
                      render_as_batch=True)  # SQLite alters tables by copying them
    with context.begin_transaction():
        context.run_migrations()
