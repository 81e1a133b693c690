"""Shift monitoring: reference profiles, served images' statistics, closed windows, events.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Four new tables and nothing else changed, so upgrading touches no stored row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _version_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"], ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "monitor_profiles",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.String(length=40), nullable=True),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("split", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        _version_fk(),
        sa.PrimaryKeyConstraint("version_id"),
    )
    op.create_table(
        "monitor_images",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("window_id", sa.Integer(), nullable=True),
        sa.Column("pred", sa.Integer(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=True),
        _version_fk(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_images_window", "monitor_images", ["version_id", "window_id"])
    op.create_index("ix_monitor_images_sha256", "monitor_images", ["version_id", "sha256"])
    op.create_table(
        "monitor_windows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("closed_at", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        _version_fk(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_windows_version_id", "monitor_windows", ["version_id"])
    op.create_table(
        "monitor_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("type", sa.String(length=10), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=False),
        _version_fk(),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_monitor_events_version_id", "monitor_events", ["version_id"])


def downgrade() -> None:
    for table in ("monitor_events", "monitor_windows", "monitor_images", "monitor_profiles"):
        op.drop_table(table)
