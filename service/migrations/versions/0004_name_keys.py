"""Names that look the same are one name: a canonical key beside every name that must be unique.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-21

``name_key`` (registered models, description sets, datasets) and ``alias_key`` (aliases) hold
``service.validation.name_key`` of the name: NFC, case and lookalike letters folded. Unique
indexes on them make ``m1`` and ``M1`` one model, ``champ`` and ``Champ`` one alias of a model,
``shapes`` and ``Shapes`` one description set, and two live datasets never share a name.

Rows that already collide:

- datasets: a later live dataset whose name an earlier live one already has is renamed to
  ``<name> (<its id>)`` (oldest first, by creation time then id). Jobs and evaluations name
  datasets by id, so nothing refers to a dataset's name.
- registered models, aliases, description sets: the upgrade stops, changing nothing, with a
  message naming every colliding row. These names are references (``models:/m1@champ``,
  ``shapes/2``) and a model's artifacts are stored under its name, so which one keeps the
  name is the operator's decision, not the migration's. Rename or delete all but one of each
  group, then upgrade again.

Keys are computed in Python (SQL's ``lower`` folds neither Unicode case in SQLite nor
lookalikes anywhere). Columns are added in place with an empty default (SQLite cannot add a
NOT NULL column without one, and copying ``registered_models`` would cascade to its versions),
filled, and only then indexed; PostgreSQL drops the default afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from service.validation import name_key, spelled

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

KEY = sa.String(length=600)
# (table, key column, the name it is the key of, the primary key)
KEYED = [
    ("registered_models", "name_key", "name", ("name",)),
    ("model_aliases", "alias_key", "alias", ("name", "alias")),
    ("description_sets", "name_key", "name", ("id",)),
    ("datasets", "name_key", "name", ("id",)),
]


class CollidingNames(RuntimeError):
    """Rows whose names differ only in case, normalisation or lookalike letters."""


def upgrade() -> None:
    bind = op.get_bind()
    refuse_collisions(bind)
    rename_live_duplicate_datasets(bind)
    for table, key_column, *_ in KEYED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(key_column, KEY, nullable=False, server_default=""))
    for table, key_column, name_column, primary_key in KEYED:
        fill_keys(bind, table, key_column, name_column, primary_key)
        if bind.dialect.name == "postgresql":
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {key_column} DROP DEFAULT")
    op.create_index("uq_registered_models_name_key", "registered_models", ["name_key"], unique=True)
    op.create_index(
        "uq_model_aliases_alias_key", "model_aliases", ["name", "alias_key"], unique=True
    )
    op.create_index(
        "uq_description_sets_name_key_version",
        "description_sets",
        ["name_key", "version"],
        unique=True,
    )
    live = sa.text("deleted_at IS NULL")
    op.create_index(
        "uq_datasets_live_name_key",
        "datasets",
        ["name_key"],
        unique=True,
        sqlite_where=live,
        postgresql_where=live,
    )


def downgrade() -> None:
    # Plain DROP COLUMN, as 0002's downgrade: a batch copy of registered_models would cascade.
    op.drop_index("uq_datasets_live_name_key", table_name="datasets")
    op.drop_index("uq_description_sets_name_key_version", table_name="description_sets")
    op.drop_index("uq_model_aliases_alias_key", table_name="model_aliases")
    op.drop_index("uq_registered_models_name_key", table_name="registered_models")
    for table, key_column, *_ in KEYED:
        op.execute(f"ALTER TABLE {table} DROP COLUMN {key_column}")


def refuse_collisions(bind: sa.Connection) -> None:
    groups = [
        *describe("registered models", colliding(rows(bind, "SELECT name FROM registered_models"))),
        *describe(
            "aliases",
            colliding(rows(bind, "SELECT alias, name FROM model_aliases")),
            "of model {!r}",
        ),
        *describe(
            "description sets",
            colliding(rows(bind, "SELECT DISTINCT name FROM description_sets")),
        ),
    ]
    if groups:
        raise CollidingNames(
            "migration 0004 makes names that differ only in case, Unicode normalisation or "
            "lookalike letters one name, and these rows already hold such names: "
            + "; ".join(groups)
            + ". Nothing was changed. Rename or delete all but one of each group (a model's "
            "artifacts are stored under '<name>/v<version>'), then migrate again."
        )


def rows(bind: sa.Connection, query: str) -> list[Sequence[Any]]:
    return [tuple(row) for row in bind.execute(sa.text(query))]


def colliding(found: Iterable[Sequence[Any]]) -> list[tuple[tuple[Any, ...], list[str]]]:
    """Groups of names (first column) with one key within the same scope (other columns)."""
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for name, *scope in found:
        groups[(*scope, name_key(name))].append(name)
    return [(key[:-1], sorted(names)) for key, names in sorted(groups.items()) if len(names) > 1]


def describe(
    what: str, groups: list[tuple[tuple[Any, ...], list[str]]], scope: str = ""
) -> list[str]:
    return [
        f"{what} {', '.join(spelled(n) for n in names)}"
        + (" " + scope.format(*where) if scope else "")
        for where, names in groups
    ]


def rename_live_duplicate_datasets(bind: sa.Connection) -> None:
    live = rows(
        bind, "SELECT id, name FROM datasets WHERE deleted_at IS NULL ORDER BY created_at, id"
    )
    taken = {name_key(name) for _, name in live}
    seen: set[str] = set()
    for dataset_id, name in live:
        key = name_key(name)
        if key not in seen:
            seen.add(key)
            continue
        # The id makes the new name unique; cut the name so the whole fits the column (200).
        renamed = f"{name[: 200 - len(dataset_id) - 3]} ({dataset_id})"
        if name_key(renamed) in taken:  # another dataset is called exactly that
            raise CollidingNames(f"cannot rename dataset {dataset_id!r}: {renamed!r} is taken")
        taken.add(name_key(renamed))
        bind.execute(
            sa.text("UPDATE datasets SET name = :name WHERE id = :id"),
            {"name": renamed, "id": dataset_id},
        )


def fill_keys(
    bind: sa.Connection, table: str, key_column: str, name_column: str, primary_key: Sequence[str]
) -> None:
    columns = ", ".join([name_column, *primary_key])
    where = " AND ".join(f"{column} = :{column}" for column in primary_key)
    update = sa.text(f"UPDATE {table} SET {key_column} = :key WHERE {where}")
    keys = [
        {"key": name_key(name), **dict(zip(primary_key, key_values, strict=True))}
        for name, *key_values in rows(bind, f"SELECT {columns} FROM {table}")
    ]
    if keys:  # one executemany: a statement per row took 35 s for 19,000 rows on PostgreSQL, 9 s so
        bind.execute(update, keys)
