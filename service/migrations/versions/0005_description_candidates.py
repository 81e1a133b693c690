"""Description sets hold pools of candidates too: a status and a provenance per version.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

``status`` is ``accepted`` (a set jobs may train on: every version stored before this one) or
``candidates`` (a pool of candidate sentences per class, user-written or drafted by a language
model, that nothing trains on until a scored proposal from it is accepted as a new version).
``provenance`` says where a version came from (a draft's model, prompt and time; an accepted
proposal's evaluation). Columns are added with a server default, so no stored row is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("description_sets") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=20), nullable=False, server_default="accepted")
        )
        batch.add_column(sa.Column("provenance", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("description_sets") as batch:
        batch.drop_column("provenance")
        batch.drop_column("status")
