"""Baseline: the human-evaluation database as it was before migrations: studies, annotators (per-study tokens), items, assignments, ratings, sessions.

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
    op.create_table('he_studies',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('eval_run', sa.Text(), nullable=False),
    sa.Column('models', sa.Text(), nullable=False),
    sa.Column('per_item', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('he_annotators',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('study', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study'], ['he_studies.name'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study', 'name')
    )
    op.create_index(op.f('ix_he_annotators_study'), 'he_annotators', ['study'], unique=False)
    op.create_table('he_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('study', sa.String(length=200), nullable=False),
    sa.Column('example_id', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('context', sa.Text(), nullable=False),
    sa.Column('reference', sa.Text(), nullable=False),
    sa.Column('model_a', sa.String(length=200), nullable=False),
    sa.Column('answer_a', sa.Text(), nullable=False),
    sa.Column('model_b', sa.String(length=200), nullable=True),
    sa.Column('answer_b', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['study'], ['he_studies.name'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_he_items_study'), 'he_items', ['study'], unique=False)
    op.create_table('he_assignments',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['annotator_id'], ['he_annotators.id'], ),
    sa.ForeignKeyConstraint(['item_id'], ['he_items.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'annotator_id')
    )
    op.create_index(op.f('ix_he_assignments_annotator_id'), 'he_assignments', ['annotator_id'], unique=False)
    op.create_index(op.f('ix_he_assignments_item_id'), 'he_assignments', ['item_id'], unique=False)
    op.create_table('he_ratings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('correctness', sa.Integer(), nullable=True),
    sa.Column('groundedness', sa.Integer(), nullable=True),
    sa.Column('helpfulness', sa.Integer(), nullable=True),
    sa.Column('preference', sa.String(length=4), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotator_id'], ['he_annotators.id'], ),
    sa.ForeignKeyConstraint(['item_id'], ['he_items.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'annotator_id')
    )
    op.create_index(op.f('ix_he_ratings_annotator_id'), 'he_ratings', ['annotator_id'], unique=False)
    op.create_index(op.f('ix_he_ratings_item_id'), 'he_ratings', ['item_id'], unique=False)
    op.create_table('he_sessions',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotator_id'], ['he_annotators.id'], ),
    sa.PrimaryKeyConstraint('id_hash')
    )
    op.create_index(op.f('ix_he_sessions_annotator_id'), 'he_sessions', ['annotator_id'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_he_sessions_annotator_id'), table_name='he_sessions')
    op.drop_table('he_sessions')
    op.drop_index(op.f('ix_he_ratings_item_id'), table_name='he_ratings')
    op.drop_index(op.f('ix_he_ratings_annotator_id'), table_name='he_ratings')
    op.drop_table('he_ratings')
    op.drop_index(op.f('ix_he_assignments_item_id'), table_name='he_assignments')
    op.drop_index(op.f('ix_he_assignments_annotator_id'), table_name='he_assignments')
    op.drop_table('he_assignments')
    op.drop_index(op.f('ix_he_items_study'), table_name='he_items')
    op.drop_table('he_items')
    op.drop_index(op.f('ix_he_annotators_study'), table_name='he_annotators')
    op.drop_table('he_annotators')
    op.drop_table('he_studies')

