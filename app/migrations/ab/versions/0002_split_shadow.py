"""A split change may set the shadow fraction too (``app ab split --shadow``, the shadow benchmark);
NULL keeps the fraction the ingress has.

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
    with op.batch_alter_table("ab_splits") as batch:
        batch.add_column(sa.Column("shadow_fraction", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ab_splits") as batch:
        batch.drop_column("shadow_fraction")
