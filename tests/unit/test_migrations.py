"""Schema migrations: every chain ends at the models' schema, and databases made before migrations
existed (tables from create_all, no version table) keep their rows when opened by this version."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app import migrations
from app.accounts import AccountStore
from app.ab.store import Base as AbBase
from app.accounts import Base as AccountsBase
from app.data.review import Base as ReviewBase
from app.data.review import ReviewStore
from app.eval.human import Base as HumanBase
from app.eval.human import HumanEvalStore

CHAINS = {"ab": AbBase.metadata, "accounts": AccountsBase.metadata, "review": ReviewBase.metadata, "human": HumanBase.metadata}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_head_schema_is_the_models_schema(tmp_path, name):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrations.upgrade(engine, name, set(CHAINS[name].tables))
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": f"alembic_version_{name}"})
        diffs = compare_metadata(ctx, CHAINS[name])
    assert diffs == []
    assert migrations.current(engine, name) == migrations.head(name)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_every_chain_downgrades_and_upgrades_again(tmp_path, name):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrations.upgrade(engine, name, set(CHAINS[name].tables))
    with engine.begin() as conn:
        cfg = migrations._config(name, conn)
        command.downgrade(cfg, "base")
        command.upgrade(cfg, "head")
    assert migrations.current(engine, name) == migrations.head(name)


def legacy_database(path, name: str) -> str:
    """A database as the app made it before migrations: the baseline tables, no version table."""
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrations._config(name, conn), migrations.BASELINE)
        conn.execute(text(f"DROP TABLE alembic_version_{name}"))
    engine.dispose()
    return url


def test_a_review_database_from_before_migrations_keeps_its_rows(tmp_path):
    url = legacy_database(tmp_path / "review.db", "review")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO review_items (pair_id, dataset, first_seen_build, last_seen_build, generator, origin, topic, "
            "doc_id, doc_path, doc_title, section, chunk_id, context, evidence, orig_question, orig_answer, question, "
            "answer, auto_accepted, reject_reason, status, reviewer, note, created_at) VALUES ('p1', 'd', 'b', 'b', "
            "'llm', '', 't', '', '', '', '', 'c', 'ctx', '', 'Q?', 'A.', 'Q?', 'Edited.', 1, '', 'edited', 'alice', "
            "'', '2026-11-30 10:00:00')"))
        conn.execute(text(
            "INSERT INTO review_events (pair_id, reviewer, action, status_before, status_after, question_before, "
            "question_after, answer_before, answer_after, note, created_at) VALUES ('p1', 'alice', 'edit', "
            "'pending', 'edited', 'Q?', 'Q?', 'A.', 'Edited.', '', '2026-11-30 10:00:00')"))
    assert "user_id" not in {c["name"] for c in inspect(engine).get_columns("review_events")}
    engine.dispose()

    store = ReviewStore(url)
    assert store.get("p1")["answer"] == "Edited." and store.get("p1")["reviewer"] == "alice"
    (event,) = store.history("p1")
    assert event["reviewer"] == "alice" and event["action"] == "edit"
    assert migrations.current(store.engine, "review") == migrations.head("review")
    assert [d["answer"] for d in store.decisions()] == ["Edited."]
    store.close()
    ReviewStore(url).close()  # opening again is a no-op


def test_a_human_database_from_before_migrations_keeps_its_annotators(tmp_path):
    url = legacy_database(tmp_path / "human.db", "human")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO he_studies (name, eval_run, models, per_item, seed, created_at) "
                          "VALUES ('s1', '/runs/x', '[\"a\", \"b\"]', 2, 0, '2026-11-30 10:00:00')"))
        conn.execute(text("INSERT INTO he_annotators (study, name, token_hash, created_at) VALUES "
                          "('s1', 'ann', :h, '2026-11-30 10:00:00')"),
                     {"h": __import__("hashlib").sha256(b"tok").hexdigest()})
    engine.dispose()
    store = HumanEvalStore(url)
    annotator = store.login("s1", "ann", "tok")  # the old token still logs in
    assert store.annotator(annotator)["name"] == "ann"
    assert migrations.current(store.engine, "human") == migrations.head("human")
    store.close()


def test_a_database_of_a_newer_version_is_refused_with_its_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    AccountStore(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version_accounts SET version_num = '9999'"))
    from app.accounts import AccountError

    with pytest.raises(AccountError, match="cannot migrate accounts database .*9999"):
        AccountStore(url)
