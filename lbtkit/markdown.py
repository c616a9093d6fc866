"""The markdown pieces every report shares: the dash for a missing value and the table."""

from __future__ import annotations

# A missing value in a table or a sentence.
DASH = "—"


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A GitHub markdown table, one line per row (header, rule, body)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body)]
