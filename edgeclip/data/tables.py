"""Caption files: CSV/TSV with a header row, and JSONL with one object per line.

One set of rules for every user: a byte-order mark is dropped (spreadsheet exports start with
one), image paths are relative to the file, the image column is `filepath` (JSONL: `image` or
`filepath`), the caption is the first of CAPTION_KEYS present, a row without an image path is
ignored, and a missing required column is a DataError that names it. Rows are listed, not
read: a missing image file surfaces when that one image is decoded.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from edgeclip.errors import DataError

__all__ = ["CAPTION_KEYS", "TABLE_SUFFIXES", "CaptionRows", "read_caption_file"]

CAPTION_KEYS: tuple[str, ...] = ("caption", "text", "title")
PATH_KEYS: tuple[str, ...] = ("image", "filepath")  # JSONL; a table's column is `filepath`
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class CaptionRows:
    """Resolved image paths and their captions ("" where a row has none)."""

    paths: list[str]
    captions: list[str]


def read_caption_file(path: Path, *, need_caption: bool) -> CaptionRows:
    """Read a .csv/.tsv/.jsonl; `need_caption` makes a caption column (or key) required."""
    try:
        if path.suffix.lower() == ".jsonl":
            return _read_jsonl(path, need_caption)
        return _read_table(path, need_caption)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}", fix="check that it is readable and UTF-8") from e


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _read_table(path: Path, need_caption: bool) -> CaptionRows:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        found = list(reader.fieldnames or [])
        caption_col = next((c for c in CAPTION_KEYS if c in found), None)
        missing = ["filepath"] if "filepath" not in found else []
        if need_caption and caption_col is None:
            missing.append("caption")
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(found) or 'none'})",
                fix=f"the header row must name a 'filepath' column{' and a caption column' if need_caption else ''}"
                    f" (captions: {' or '.join(CAPTION_KEYS)}); image paths are relative to the file",
            )
        rows = [((r.get("filepath") or "").strip(), (r.get(caption_col) or "").strip() if caption_col else "")
                for r in reader]
    rows = [(p, c) for p, c in rows if p]
    return CaptionRows([_resolve(path.parent, p) for p, _ in rows], [c for _, c in rows])


def _read_jsonl(path: Path, need_caption: bool) -> CaptionRows:
    paths, captions = [], []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg}", fix="one JSON object per line") from e
            image = _first(row, PATH_KEYS)
            caption = _first(row, CAPTION_KEYS)
            if image is None or (need_caption and caption is None):
                wanted = "'image' (or 'filepath')" + (" and 'caption' (or 'text')" if need_caption else "")
                raise DataError(f"{path}:{lineno}: expected {wanted} strings",
                                fix='write lines like {"image": "img/0001.jpg", "caption": "a photo of a cat"}')
            paths.append(_resolve(path.parent, image.strip()))
            captions.append((caption or "").strip())
    return CaptionRows(paths, captions)


def _first(row: object, keys: tuple[str, ...]) -> str | None:
    if not isinstance(row, dict):
        return None
    value = next((row[k] for k in keys if k in row), None)
    return value if isinstance(value, str) else None
