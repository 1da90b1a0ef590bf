"""Result tables: a CSV for machines and a Markdown file for people, written atomically.

Every table of ``results/<profile>/tables/`` is written by `write_table` under a
fixed, self-describing name (``tab_rq1_main``): ``<name>.csv`` holds the long
form (one row per method, budget and setting, means and ``*_std`` over seeds),
``<name>.md`` a title, the lines that say what the numbers are (FID backbone,
datasets, reporting-only test split) and the table, in the paper's shape when
one is given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from privimage.cache import atomic_write_bytes
from privimage.errors import PrivImageError

# Shown for a missing value (a skipped method, a metric that does not apply).
MISSING = "-"


def format_value(value, *, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant figures, missing values as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        # Counts averaged over seeds stay readable (4000, not 4e+03).
        return str(int(value))
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, *, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (columns as the header row).

    pandas' ``to_markdown`` needs the optional ``tabulate`` package; a pipe
    table is a few lines and keeps the dependency list as it is.

    Args:
        frame: the table; a MultiIndex header is joined with " / ".
        digits: significant figures of numbers.

    Returns:
        The table as text, one row per line.
    """
    headers = [" / ".join(str(p) for p in c if str(p)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(format_value(v, digits=digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def mean_std_cells(frame: pd.DataFrame, *, metrics: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """Replace each metric column by "mean ± std" text where a ``<metric>_std`` column has a value."""
    shown = frame.copy()
    for metric in metrics:
        std_column = f"{metric}_std"
        if std_column not in frame:
            continue
        shown[metric] = [
            format_value(m, digits=digits) if s is None or (isinstance(s, float) and math.isnan(s)) or m is None
            or (isinstance(m, float) and math.isnan(m)) else f"{m:.{digits}g} ± {s:.2g}"
            for m, s in zip(frame[metric], frame[std_column])
        ]
        shown = shown.drop(columns=std_column)
    return shown


def write_table(
    *,
    frame: pd.DataFrame,
    name: str,
    directory: Path,
    title: str,
    notes: Iterable[str] = (),
    display: pd.DataFrame | None = None,
    digits: int = 3,
) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.csv`` (long form) and ``<directory>/<name>.md`` (titled, annotated).

    Args:
        frame: the long-form table written to CSV, all columns.
        name: the fixed file stem, e.g. ``tab_rq1_main``.
        directory: ``results/<profile>/tables``.
        title: the Markdown heading.
        notes: lines printed under the heading (backbone, datasets, what is reporting only).
        display: the table shown in Markdown (default: ``frame``), e.g. the paper's shape.
        digits: significant figures in Markdown.

    Returns:
        ``(csv_path, markdown_path)``.
    """
    if not name or "/" in name or name.endswith((".csv", ".md")):
        raise PrivImageError(f"table name must be a bare file stem like 'tab_rq1_main', got '{name}'")
    directory = Path(directory)
    csv_path, markdown_path = directory / f"{name}.csv", directory / f"{name}.md"
    atomic_write_bytes(csv_path, frame.to_csv(index=False).encode())
    body = [f"# {title}", ""]
    body += [f"- {note}" for note in notes if note]
    body += ["", markdown_table(display if display is not None else frame, digits=digits)]
    atomic_write_bytes(markdown_path, "\n".join(body).encode())
    return csv_path, markdown_path


def paper_shape(
    summary: pd.DataFrame, *, rows: str, columns: str, metrics: Sequence[str], labels: dict[str, str] | None = None,
    digits: int = 3,
) -> pd.DataFrame:
    """Pivot a long summary into the paper's layout: one row per ``rows`` value, metric columns per ``columns`` value.

    Args:
        summary: the output of `privimage.experiments.summarize`.
        rows: the row key (e.g. ``"method"``); row order follows the summary.
        columns: the column group key (e.g. ``"epsilon"``).
        metrics: the metrics shown in each group (``*_std`` shown as "mean ± std").
        labels: display names of the metrics (e.g. ``{"ca_lr": "CA LR"}``).
        digits: significant figures.

    Returns:
        A DataFrame whose first column is ``rows`` and whose other columns are
        "<columns>=<value> <metric>" text cells.
    """
    labels = labels or {}
    cells = mean_std_cells(summary, metrics=metrics, digits=digits)
    order = list(dict.fromkeys(summary[rows]))
    groups = list(dict.fromkeys(summary[columns]))
    table = pd.DataFrame({rows: order})
    for group in groups:
        part = cells[summary[columns].eq(group) | (summary[columns].isna() & pd.isna(group))]
        for metric in metrics:
            lookup = dict(zip(part[rows], part[metric]))
            header = f"{columns} {format_value(group)} {labels.get(metric, metric)}" if len(groups) > 1 or \
                not pd.isna(group) else labels.get(metric, metric)
            table[header] = [format_value(lookup.get(key), digits=digits) for key in order]
    return table
