"""Review events record the authenticated account (``user_id`` in the accounts database) beside its name.

Events written before accounts existed keep ``user_id`` empty and their free-text ``reviewer``.

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
    with op.batch_alter_table("review_events") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("review_events") as batch:
        batch.drop_column("user_id")
