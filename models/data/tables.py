"""Reading CSV and JSONL tables row by row, with 1-based rows in every error."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.data.splits import quoted
from models.errors import DataError


def read_csv(file: Path, required: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    try:
        with open(file, encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            if reader.fieldnames is None:
                raise DataError("empty file; expected a header row", file=str(file))
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            _require_columns(reader.fieldnames, required, file)
            return list(enumerate(reader, start=1))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"unreadable CSV: {exc}", file=str(file)) from exc


def _require_columns(present: Sequence[str], required: Sequence[str], file: Path) -> None:
    missing = [column for column in required if column not in present]
    if missing:
        label = "column" if len(missing) == 1 else "columns"
        header = ", ".join(present) or "nothing"
        raise DataError(f"missing {label} {quoted(missing)} (header: {header})", file=str(file))


def read_jsonl(file: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc}", file=str(file)) from exc
    return [
        (row, _json_object(line, row, file)) for row, line in enumerate(lines, 1) if line.strip()
    ]


def _json_object(line: str, row: int, file: Path) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", file=str(file), row=row) from exc
    if not isinstance(value, dict):
        raise DataError("expected a JSON object", file=str(file), row=row)
    return value


def field(record: Mapping[str, Any], column: str, row: int, file: Path) -> str:
    if column not in record:
        raise DataError(f"missing column '{column}'", file=str(file), row=row)
    value = text(record[column], column, row, file)
    if not value:
        raise DataError(f"empty {column}", file=str(file), row=row)
    return value


def group(value: Any, row: int, file: Path) -> str | None:
    return text(value, "group", row, file) or None


def text(value: Any, column: str, row: int, file: Path) -> str:
    if value is None:
        return ""
    # JSON numbers are accepted (class "3", location 12); lists, objects and booleans are not.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{column} must be a string, got {value!r}", file=str(file), row=row)
    return str(value).strip()
