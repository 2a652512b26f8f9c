"""URL list files: CSV, TSV, JSON Lines or Parquet with one image per row.

Columns (names case-insensitive): ``url`` (required), ``group`` (a group id of the
groups file; required unless a default group is given), ``licence`` (or ``license``),
``attribution``, ``page_url``. The last three may be empty; an empty licence means
*unknown*. Rows whose URL is empty or not an absolute http(s) URL are reported as
problems and skipped; an unknown group is an error for the whole file (it is almost
always a typo that would otherwise silently drop rows).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generators.sources.candidate import Candidate
from manifests.record import canonical_url

_ALIASES = {"license": "licence", "page": "page_url", "pageurl": "page_url", "source_page": "page_url"}
COLUMNS = ("url", "group", "licence", "attribution", "page_url")


class UrlListError(ValueError):
    """The URL list cannot be used as a whole; the message names the file, the lines and the fix."""


@dataclass
class UrlList:
    """Candidates read from a file, in file order, and the rows that were skipped (line, reason)."""

    candidates: list[Candidate]
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None:
                return []
            return [(reader.line_num, row) for row in reader]
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UrlListError(f"{path}:{number}: not a JSON object ({error.msg})") from None
                if not isinstance(row, dict):
                    raise UrlListError(f"{path}:{number}: each line must be a JSON object with a 'url' key")
                rows.append((number, row))
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(number, row) for number, row in enumerate(pq.read_table(path).to_pylist(), start=1)]
    raise UrlListError(f"{path}: unsupported URL list format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_url_list(
    path: str | Path, groups: set[str] | None = None, default_group: str | None = None
) -> UrlList:
    """Read a URL list; ``groups`` (ids) validates the group column, ``default_group`` fills empty cells.

    Duplicate URLs (same canonical URL) keep their first row; later ones are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise UrlListError(f"URL list {path} does not exist")
    rows = _rows(path)
    result = UrlList(candidates=[])
    seen: set[str] = set()
    unknown_groups: list[str] = []
    for number, raw in rows:
        row = {_ALIASES.get(str(k).strip().lower(), str(k).strip().lower()): v for k, v in raw.items() if k}
        if "url" not in row:
            raise UrlListError(
                f"{path}: no 'url' column (found {sorted(row)}); the header must include {COLUMNS}"
            )
        url = _text(row.get("url"))
        group = _text(row.get("group")) or default_group
        if url is None:
            result.skipped.append((number, "empty url"))
            continue
        try:
            key = canonical_url(url)
        except ValueError as error:
            result.skipped.append((number, str(error)))
            continue
        if group is None:
            raise UrlListError(
                f"{path}:{number}: no group for {url}; add a 'group' column or give a default group"
            )
        if groups is not None and group not in groups:
            unknown_groups.append(f"line {number}: {group!r}")
            continue
        if key in seen:
            result.skipped.append((number, f"duplicate of an earlier row: {url}"))
            continue
        seen.add(key)
        result.candidates.append(
            Candidate(
                url=url,
                group=group,
                licence=_text(row.get("licence")),
                attribution=_text(row.get("attribution")),
                page_url=_text(row.get("page_url")),
                provider="urls",
            )
        )
    if unknown_groups:
        shown = "; ".join(unknown_groups[:10]) + (
            f"; ... ({len(unknown_groups)} rows)" if len(unknown_groups) > 10 else ""
        )
        raise UrlListError(
            f"{path}: unknown group id(s) ({shown}); use ids of the groups file (see manifests/groups.yaml)"
        )
    return result
