"""Baseline: the review database as it was before migrations: items and their event log.

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
    op.create_table('review_items',
    sa.Column('pair_id', sa.String(length=64), nullable=False),
    sa.Column('dataset', sa.String(length=200), nullable=False),
    sa.Column('first_seen_build', sa.String(length=200), nullable=False),
    sa.Column('last_seen_build', sa.String(length=200), nullable=False),
    sa.Column('generator', sa.String(length=64), nullable=False),
    sa.Column('origin', sa.Text(), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('doc_id', sa.String(length=200), nullable=False),
    sa.Column('doc_path', sa.Text(), nullable=False),
    sa.Column('doc_title', sa.Text(), nullable=False),
    sa.Column('section', sa.Text(), nullable=False),
    sa.Column('chunk_id', sa.String(length=200), nullable=False),
    sa.Column('context', sa.Text(), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.Column('orig_question', sa.Text(), nullable=False),
    sa.Column('orig_answer', sa.Text(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('auto_accepted', sa.Boolean(), nullable=False),
    sa.Column('reject_reason', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reviewer', sa.String(length=200), nullable=True),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pair_id')
    )
    op.create_index(op.f('ix_review_items_dataset'), 'review_items', ['dataset'], unique=False)
    op.create_index(op.f('ix_review_items_generator'), 'review_items', ['generator'], unique=False)
    op.create_index(op.f('ix_review_items_status'), 'review_items', ['status'], unique=False)
    op.create_index(op.f('ix_review_items_topic'), 'review_items', ['topic'], unique=False)
    op.create_table('review_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('pair_id', sa.String(length=64), nullable=False),
    sa.Column('reviewer', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('status_before', sa.String(length=16), nullable=False),
    sa.Column('status_after', sa.String(length=16), nullable=False),
    sa.Column('question_before', sa.Text(), nullable=False),
    sa.Column('question_after', sa.Text(), nullable=False),
    sa.Column('answer_before', sa.Text(), nullable=False),
    sa.Column('answer_after', sa.Text(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pair_id'], ['review_items.pair_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_review_events_pair_id'), 'review_events', ['pair_id'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_review_events_pair_id'), table_name='review_events')
    op.drop_table('review_events')
    op.drop_index(op.f('ix_review_items_topic'), table_name='review_items')
    op.drop_index(op.f('ix_review_items_status'), table_name='review_items')
    op.drop_index(op.f('ix_review_items_generator'), table_name='review_items')
    op.drop_index(op.f('ix_review_items_dataset'), table_name='review_items')
    op.drop_table('review_items')

