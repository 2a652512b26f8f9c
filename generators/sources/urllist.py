"""URL list files: CSV, TSV, JSON Lines or Parquet with one image per row.

Columns (names case-insensitive): ``url`` (required), ``group`` (a group id of the
groups file; required unless a default group is given), ``licence`` (or ``license``),
``attribution``, ``page_url``. The last three may be empty; an empty licence means
*unknown*. Rows whose URL (or page URL) is empty or not an absolute http(s) URL are
reported as problems and skipped; an unknown group, a column given twice (``licence`` and
``license``), a file that is not UTF-8, a cell over ``MAX_FIELD_CHARACTERS`` and a file
that does not parse are errors for the whole file (almost always a mistake that would
otherwise silently drop or change rows). Text cells may be bytes (Parquet ``binary``)
only when they are UTF-8.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generators.sources.candidate import Candidate
from manifests.record import canonical_url, web_url

_ALIASES = {"license": "licence", "page": "page_url", "pageurl": "page_url", "source_page": "page_url"}
COLUMNS = ("url", "group", "licence", "attribution", "page_url")
MAX_FIELD_CHARACTERS = 131_072
"""The longest cell read (Python's csv default): longer is an error, not a truncated value."""


class UrlListError(ValueError):
    """The URL list cannot be used as a whole; the message names the file, the lines and the fix."""


@dataclass
class UrlList:
    """Candidates read from a file, in file order, and the rows that were skipped (line, reason)."""

    candidates: list[Candidate]
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        return _parse_rows(path)
    except UnicodeDecodeError as error:
        raise UrlListError(
            f"{path}: not UTF-8 text (byte {error.object[error.start : error.start + 1]!r} at offset "
            f"{error.start}); save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _header(path: Path, names: list[str]) -> None:
    """UrlListError when two header cells name the same column (``url`` and ``URL``, ``licence`` and ``license``)."""
    columns = [_ALIASES.get(name.strip().lower(), name.strip().lower()) for name in names if name]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise UrlListError(
            f"{path}: column(s) {repeated} given more than once in the header {names}; keep one of each"
        )


def _parse_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None:
                return []
            _header(path, list(reader.fieldnames))
            rows = []
            try:
                for row in reader:
                    rows.append((reader.line_num, row))
            except csv.Error as error:
                raise UrlListError(
                    f"{path}:{reader.line_num}: {error} (cells hold at most {MAX_FIELD_CHARACTERS} "
                    "characters; check for an unclosed quote)"
                ) from None
            return rows
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
                _header(path, list(row))
                rows.append((number, row))
        return rows
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            raise UrlListError(f"{path}: not a readable Parquet file ({error}); write it again") from None
        _header(path, table.column_names)
        return [(number, row) for number, row in enumerate(table.to_pylist(), start=1)]
    raise UrlListError(f"{path}: unsupported URL list format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _text(value: Any, where: str = "") -> str | None:
    """A cell as stripped text (None when empty); UTF-8 bytes are decoded, others are an error."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise UrlListError(
                f"{where}: a binary cell that is not UTF-8 text; store it as a string"
            ) from None
    text = str(value).strip()
    if len(text) > MAX_FIELD_CHARACTERS:
        raise UrlListError(f"{where}: a cell of {len(text)} characters (at most {MAX_FIELD_CHARACTERS})")
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
        where = f"{path}:{number}"
        url = _text(row.get("url"), f"{where} url")
        group = _text(row.get("group"), f"{where} group") or default_group
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
        page_url = _text(row.get("page_url"), f"{where} page_url")
        if page_url is not None:
            try:
                page_url = web_url(page_url, "page_url")
            except ValueError as error:
                result.skipped.append((number, str(error)))
                continue
        seen.add(key)
        result.candidates.append(
            Candidate(
                url=web_url(url),
                group=group,
                licence=_text(row.get("licence"), f"{where} licence"),
                attribution=_text(row.get("attribution"), f"{where} attribution"),
                page_url=page_url,
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
