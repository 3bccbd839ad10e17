"""Comparing database schemas: ``pg_dump --schema-only`` normalised for ordering only.

A database upgraded release by release and one migrated fresh by the newer release must hold the
same objects; the order pg_dump prints them in (and the order of a table's columns, which
``ALTER TABLE ... ADD COLUMN`` puts last) may differ. Everything else counts.
"""

from __future__ import annotations

import difflib
import re

_CREATE_TABLE = re.compile(r"^CREATE TABLE (\S+) \((.*)\)$", re.S)


def normalise(dump: str) -> list[str]:
    """One line per schema statement (one per column for tables), sorted; comments and settings dropped."""
    kept = [
        line for line in dump.splitlines()
        if line.strip() and not line.startswith(("--", "\\", "SET ", "SELECT pg_catalog.set_config"))
    ]
    lines = []
    for statement in "\n".join(kept).split(";\n"):
        statement = statement.strip().rstrip(";")
        if not statement:
            continue
        table = _CREATE_TABLE.match(statement)
        if table:
            for column in table.group(2).splitlines():
                column = column.strip().rstrip(",")
                if column:
                    lines.append(f"TABLE {table.group(1)} :: {column}")
            continue
        lines.append(" ".join(statement.split()))
    return sorted(lines)


def differences(expected: str, actual: str) -> list[str]:
    """The lines that differ (``-`` only in ``expected``, ``+`` only in ``actual``); empty when equal."""
    diff = difflib.unified_diff(normalise(expected), normalise(actual), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
