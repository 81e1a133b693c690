"""Hardening: version numbers never reused, dataset ownership and deletion, key rotation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Columns are added through ``op.batch_alter_table`` (SQLite adds them in place) and dropped
with plain ``ALTER TABLE ... DROP COLUMN`` (see ``downgrade``).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.add_column(
            sa.Column("last_version", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
    # Numbers already given stay given: the counter starts at each model's highest version.
    op.execute(
        "UPDATE registered_models SET last_version = (SELECT COALESCE(MAX(v.version), 0) "
        "FROM model_versions v WHERE v.name = registered_models.name)"
    )
    with op.batch_alter_table("job_checkpoints") as batch:
        batch.add_column(sa.Column("fine_tuned_model", sa.Text(), nullable=True))
        batch.add_column(sa.Column("files_deleted_at", sa.Integer(), nullable=True))
    # A succeeded job's last checkpoint is its registered version; a finished job's other
    # checkpoints were deleted with its work folder, so they are marked gone (rows are kept).
    op.execute(
        "UPDATE job_checkpoints SET fine_tuned_model = (SELECT j.fine_tuned_model FROM jobs j "
        "WHERE j.id = job_checkpoints.job_id AND j.status = 'succeeded' "
        "AND j.progress_step = job_checkpoints.step_number)"
    )
    op.execute(
        sa.text(
            "UPDATE job_checkpoints SET files_deleted_at = :now WHERE fine_tuned_model IS NULL "
            "AND job_id IN (SELECT id FROM jobs WHERE status IN "
            "('succeeded', 'failed', 'cancelled'))"
        ).bindparams(now=int(time.time()))
    )
    op.execute(
        sa.text(
            "UPDATE job_checkpoints SET files_deleted_at = :now WHERE fine_tuned_model IS NOT "
            "NULL AND fine_tuned_model NOT IN (SELECT name || '/' || CAST(version AS VARCHAR) "
            "FROM model_versions WHERE status = 'READY')"
        ).bindparams(now=int(time.time()))
    )
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("created_by", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.Integer(), nullable=True))
        batch.create_index("ix_datasets_created_by", ["created_by"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("bootstrap", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Keys stored from RCS_BOOTSTRAP_API_KEY before this column were named "bootstrap".
    op.execute("UPDATE api_keys SET bootstrap = TRUE WHERE name = 'bootstrap'")


def downgrade() -> None:
    # Not through batch_alter_table: on SQLite it copies the table and drops the old one, and
    # with foreign keys on, dropping registered_models cascades to every version and alias
    # (and dropping datasets fails while jobs point at it). SQLite (3.35+) and PostgreSQL both
    # drop a plain, unindexed column in place.
    op.drop_index("ix_datasets_created_by", table_name="datasets")
    for table, column in [
        ("api_keys", "bootstrap"),
        ("datasets", "deleted_at"),
        ("datasets", "size_bytes"),
        ("datasets", "created_by"),
        ("job_checkpoints", "files_deleted_at"),
        ("job_checkpoints", "fine_tuned_model"),
        ("model_versions", "digest"),
        ("registered_models", "last_version"),
    ]:
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
