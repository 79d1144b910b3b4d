"""The results file of a benchmark: a few lines of heading and setting, then one markdown table."""

from __future__ import annotations

from pathlib import Path


def write_table(path: Path, head: list[str], columns: list[str], rows: list[str], numeric_from: int = 1) -> str:
    """Write head, a blank line and the table (columns from `numeric_from` on right-aligned) to path;
    returns the text."""
    align = ["---"] * numeric_from + ["---:"] * (len(columns) - numeric_from)
    text = "\n".join([*head, "", "| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|", *rows, ""])
    path.write_text(text)
    print(text)
    return text
