"""Baseline: the A/B experiment database: request events (served and shadow), feedback, split changes.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ab_requests',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('experiment', sa.String(length=200), nullable=False),
    sa.Column('unit', sa.String(length=200), nullable=False),
    sa.Column('arm', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=10), nullable=False),
    sa.Column('primary_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('context', sa.Text(), nullable=True),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('ttft_ms', sa.Float(), nullable=True),
    sa.Column('e2e_ms', sa.Float(), nullable=True),
    sa.Column('output_tokens', sa.Integer(), nullable=True),
    sa.Column('scored', sa.Boolean(), nullable=False),
    sa.Column('answer_words', sa.Integer(), nullable=True),
    sa.Column('empty_or_refusal', sa.Boolean(), nullable=True),
    sa.Column('groundedness', sa.Float(), nullable=True),
    sa.Column('domain_correct', sa.Float(), nullable=True),
    sa.Column('token_f1', sa.Float(), nullable=True),
    sa.Column('similarity_to_primary', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_ab_requests_experiment'), 'ab_requests', ['experiment'], unique=False)
    op.create_index(op.f('ix_ab_requests_primary_id'), 'ab_requests', ['primary_id'], unique=False)
    op.create_table('ab_splits',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('experiment', sa.String(length=200), nullable=False),
    sa.Column('weights', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_ab_splits_experiment'), 'ab_splits', ['experiment'], unique=False)
    op.create_table('ab_feedback',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('experiment', sa.String(length=200), nullable=False),
    sa.Column('thumbs_up', sa.Boolean(), nullable=True),
    sa.Column('rating', sa.Integer(), nullable=True),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['ab_requests.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id')
    )
    op.create_index(op.f('ix_ab_feedback_experiment'), 'ab_feedback', ['experiment'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_ab_feedback_experiment'), table_name='ab_feedback')
    op.drop_table('ab_feedback')
    op.drop_index(op.f('ix_ab_splits_experiment'), table_name='ab_splits')
    op.drop_table('ab_splits')
    op.drop_index(op.f('ix_ab_requests_primary_id'), table_name='ab_requests')
    op.drop_index(op.f('ix_ab_requests_experiment'), table_name='ab_requests')
    op.drop_table('ab_requests')
