"""Annotators may be accounts: ``user_id`` links one to the accounts database (it logs in with the
account's password); the per-study token becomes optional (kept for annotators without an account).

Annotators created before accounts existed keep their token and an empty ``user_id``.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("he_annotators") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch.alter_column("token_hash", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("he_annotators") as batch:
        batch.alter_column("token_hash", existing_type=sa.String(length=64), nullable=False)
        batch.drop_column("user_id")
