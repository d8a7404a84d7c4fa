from alembic import context

from app.migrations import run_env

run_env(context)
