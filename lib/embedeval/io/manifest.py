"""Read and validate a catalogue manifest (Parquet, CSV or JSONL; local or s3://).

A malformed *file* (unreadable, no ``id`` column, no media column where one is required) is a
:class:`ManifestError` that names the file and the fix. A manifest for precomputed vectors only needs no
media column (``require_media=False``): ``id`` and the metadata columns are enough. A malformed *row* is quarantined with its reason and the rest goes on:
missing or empty id, duplicate id (the first occurrence is kept), a media path that escapes the allowed
roots, an empty caption (only that caption), text that is not valid UTF-8, a non-numeric attribute (set to
NaN and counted). Files that are missing or undecodable are found later, when the pipeline reads them.

Groups (outfits). An optional ``group`` column puts pictures in groups; a null or empty group is a group of
its own row. Tags then belong to the group: they may be given on any row of it (rows with no tags inherit
the group's), and every row that gives tags must give the same set, else every row of that group is
quarantined with the reason. Accepted rows carry their group's tags in ``tags``.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from embedeval.errors import EmbedevalError
from embedeval.io.quarantine import QuarantineLog
from embedeval.io.storage import Storage, is_s3_uri, locate

MEDIA_COLUMNS = ("image", "sketch")
LIST_COLUMNS = ("captions", "tags")


class ManifestError(EmbedevalError, ValueError):
    """The manifest file as a whole cannot be used; the message names the file and what to change."""


@dataclass
class ManifestReadResult:
    """Accepted rows (unique ids, media columns resolved to absolute URIs) and what was quarantined."""

    uri: str
    table: pa.Table
    quarantine: QuarantineLog
    rows_read: int
    allowed_roots: list[str] = field(default_factory=list)

    def modalities(self) -> list[str]:
        out = [m for m in MEDIA_COLUMNS if m in self.table.column_names]
        if "captions" in self.table.column_names:
            out.append("text")
        return out

    def attributes(self) -> list[str]:
        return [c[len("attr_"):] for c in self.table.column_names if c.startswith("attr_")]


def manifest_folder(uri: str) -> str:
    """The folder a manifest's relative paths are resolved against (absolute; ``s3://`` kept)."""
    if is_s3_uri(uri):
        return uri.rsplit("/", 1)[0]
    return str(Path(uri).expanduser().resolve().parent)


def read_raw_manifest(uri: str, storage: Storage | None = None, *,
                      require_media: bool = True) -> tuple[pa.Table, QuarantineLog]:
    """Read the file into an Arrow table without validating rows. Lines that do not parse are quarantined.

    ``require_media``: the file must have one of the columns image, sketch, captions (off for a manifest
    whose vectors are all precomputed).
    """
    fs, path = locate(uri, storage)
    log = QuarantineLog()
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {uri} does not exist") from exc
    except OSError as exc:
        raise ManifestError(f"manifest {uri} cannot be read: {exc}") from exc
    lower = uri.lower()
    if lower.endswith(".parquet"):
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ManifestError(f"manifest {uri} is not a readable Parquet file: {exc}") from exc
    elif lower.endswith(".csv"):
        table = _read_csv(data, uri, log)
    elif lower.endswith(".jsonl") or lower.endswith(".ndjson"):
        table = _read_jsonl(data, uri, log)
    else:
        raise ManifestError(f"manifest {uri}: unknown format; use a .parquet, .csv or .jsonl file")
    if "id" not in table.column_names:
        raise ManifestError(f"manifest {uri} has no 'id' column (columns: {', '.join(table.column_names)})")
    if require_media and not ({"image", "sketch", "captions"} & set(table.column_names)):
        raise ManifestError(f"manifest {uri} needs at least one of the columns image, sketch, captions "
                            "(only a manifest whose models are all precomputed: can do without)")
    return table, log


def _read_csv(data: bytes, uri: str, log: QuarantineLog) -> pa.Table:
    # Read every column as bytes so one row of non-UTF-8 text is quarantined instead of failing the file.
    import csv as _csv

    try:
        header_line = data.split(b"\n", 1)[0].decode("utf-8-sig").strip("\r")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {uri}: the header line is not UTF-8") from exc
    names = next(_csv.reader([header_line]), [])
    if not names:
        raise ManifestError(f"manifest {uri} is an empty CSV file")
    try:
        raw = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
            column_types={n: pa.binary() for n in names}, strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise ManifestError(f"manifest {uri} is not a readable CSV file: {exc}") from exc
    columns: dict[str, list] = {n: [] for n in names}
    keep_rows: list[int] = []
    for row in range(raw.num_rows):
        values = {}
        bad = None
        for n in names:
            b = raw.column(n)[row].as_py()
            try:
                values[n] = b.decode("utf-8") if b is not None else None
            except UnicodeDecodeError:
                bad = f"column {n!r} is not valid UTF-8"
                break
        if bad:
            rid = raw.column("id")[row].as_py() if "id" in names else None
            log.add(rid.decode("utf-8", "replace") if isinstance(rid, bytes) else None, "manifest", bad, row=row)
            continue
        keep_rows.append(row)
        for n in names:
            columns[n].append(values[n])
    out = {}
    for n, vals in columns.items():
        if n in LIST_COLUMNS:
            out[n] = pa.array([_parse_list_cell(v) for v in vals], pa.list_(pa.string()))
        elif n.startswith("attr_"):
            out[n] = pa.array([v if v not in (None, "") else None for v in vals], pa.string())
        else:
            out[n] = pa.array([v if v != "" else None for v in vals], pa.string())
    table = pa.table(out) if out else pa.table({})
    return table.append_column("_row", pa.array(keep_rows, pa.int64()))


def _parse_list_cell(value: str | None) -> list[str] | None:
    """CSV list cells: a JSON list (``["a", "b"]``) or ``|``-separated text."""
    if value is None or value == "":
        return None
    if value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except json.JSONDecodeError:
            pass
    return [part.strip() for part in value.split("|")]


def _read_jsonl(data: bytes, uri: str, log: QuarantineLog) -> pa.Table:
    records = []
    rows = []
    for lineno, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("a line must be a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            log.add(None, "manifest", f"line {lineno + 1} is not a JSON object: {str(exc)[:200]}", row=lineno)
            continue
        records.append(rec)
        rows.append(lineno)
    if not records:
        raise ManifestError(f"manifest {uri} has no readable JSON lines")
    names: list[str] = []
    for rec in records:
        for k in rec:
            if k not in names:
                names.append(k)
    out = {}
    for n in names:
        vals = [rec.get(n) for rec in records]
        if n in LIST_COLUMNS:
            out[n] = pa.array([[str(x) for x in v] if isinstance(v, list) else (None if v is None else [str(v)])
                               for v in vals], pa.list_(pa.string()))
        else:
            out[n] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    table = pa.table(out)
    return table.append_column("_row", pa.array(rows, pa.int64()))


def resolve_media_path(value: str, manifest_dir: str, allowed_roots: list[str]) -> str:
    """Resolve a manifest path to an absolute URI; raise ValueError if it escapes every allowed root."""
    if is_s3_uri(value):
        resolved = "s3://" + posixpath.normpath(value[len("s3://"):])
    elif is_s3_uri(manifest_dir):
        if value.startswith("/"):
            raise ValueError(f"absolute path {value!r} in an s3:// manifest")
        resolved = "s3://" + posixpath.normpath(posixpath.join(manifest_dir[len("s3://"):], value))
    else:
        p = Path(value)
        resolved = str((p if p.is_absolute() else Path(manifest_dir) / p).resolve())
    if inside_roots(resolved, allowed_roots):
        return resolved
    raise ValueError(f"path {value!r} resolves to {resolved}, outside the allowed roots {allowed_roots}")


def inside_roots(resolved: str, roots: list[str]) -> bool:
    """Whether an absolute path or normalised ``s3://`` URI is one of ``roots`` or lies under one."""
    for root in roots:
        root_norm = root.rstrip("/")
        if resolved == root_norm or resolved.startswith(root_norm + "/"):
            return True
    return False


def normalise_roots(manifest_dir: str, extra_roots: list[str] | None) -> list[str]:
    """The roots a manifest's paths may point into: its own folder, then ``extra_roots`` made absolute."""
    roots = [manifest_dir]
    for r in extra_roots or []:
        roots.append(("s3://" + posixpath.normpath(r[len("s3://"):])) if is_s3_uri(r) else str(Path(r).expanduser().resolve()))
    return roots


def load_manifest(uri: str, storage: Storage | None = None, *, allowed_roots: list[str] | None = None,
                  require_media: bool = True) -> ManifestReadResult:
    """Read, validate and normalise a manifest. See the module docstring for what is quarantined.

    ``require_media=False`` accepts a vectors-only manifest (no image, sketch or captions column).
    """
    raw, log = read_raw_manifest(uri, storage, require_media=require_media)
    manifest_dir = manifest_folder(uri)
    roots = normalise_roots(manifest_dir, allowed_roots)
    n_raw = raw.num_rows
    rows_read = n_raw + len(log)
    row_numbers = raw.column("_row").to_pylist() if "_row" in raw.column_names else list(range(n_raw))
    raw = raw.drop_columns(["_row"]) if "_row" in raw.column_names else raw

    columns = {n: raw.column(n).to_pylist() for n in raw.column_names}
    ids = columns["id"]
    keep: list[int] = []
    seen_order: list[int] = []   # the raw index behind each accepted row's media values
    seen: dict[str, int] = {}
    media = {m: [] for m in MEDIA_COLUMNS if m in columns}
    for i in range(n_raw):
        rid = ids[i]
        rid = None if rid is None else str(rid).strip()
        if not rid:
            log.add(None, "manifest", "missing or empty id", row=row_numbers[i])
            continue
        if rid in seen:
            log.add(rid, "manifest", f"duplicate id (first occurrence at row {seen[rid]} kept)", row=row_numbers[i])
            continue
        resolved = {}
        problem = None
        for m in media:
            value = columns[m][i]
            if value is None or str(value).strip() == "":
                resolved[m] = None
                continue
            try:
                resolved[m] = resolve_media_path(str(value), manifest_dir, roots)
            except ValueError as exc:
                problem = f"{m}: {exc}"
                break
        if problem:
            log.add(rid, "manifest", problem, row=row_numbers[i])
            continue
        seen[rid] = row_numbers[i]
        keep.append(i)
        seen_order.append(i)
        for m in media:
            media[m].append(resolved[m])

    group_tags: dict[int, list[str]] = {}
    if "group" in columns:
        keep, group_tags = _group_tags(keep, ids, columns["group"], columns.get("tags"), row_numbers, log)
        kept = set(keep)
        media = {m: [v for i, v in zip(seen_order, values) if i in kept] for m, values in media.items()}

    out: dict[str, pa.Array] = {"id": pa.array([str(ids[i]).strip() for i in keep], pa.string())}
    for m, values in media.items():
        out[m] = pa.array(values, pa.string())
    if "group" in columns:
        out["group"] = pa.array([_group_value(columns["group"][i]) for i in keep], pa.string())
    if "captions" in columns:
        out["captions"] = pa.array([_clean_captions(columns["captions"][i], str(ids[i]).strip(), row_numbers[i], log)
                                    for i in keep], pa.list_(pa.string()))
    if "tags" in columns:
        out["tags"] = pa.array([group_tags[i] if i in group_tags else _clean_tags(columns["tags"][i])
                                for i in keep], pa.list_(pa.string()))
    for name in ("label", "split", "class_split"):
        if name in columns:
            out[name] = pa.array([None if columns[name][i] is None else str(columns[name][i]) for i in keep], pa.string())
    for name in columns:
        if name.startswith("attr_"):
            out[name] = pa.array([_to_float(columns[name][i]) for i in keep], pa.float64())
    extra = [n for n in columns if n not in out]
    for name in extra:
        try:
            out[name] = raw.column(name).take(pa.array(keep, pa.int64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    table = pa.table(out)
    return ManifestReadResult(uri=uri, table=table, quarantine=log, rows_read=rows_read, allowed_roots=roots)


def _clean_tags(value: list[str] | None) -> list[str]:
    return [str(t).strip() for t in (value or []) if str(t).strip()]


def _group_value(value: object) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None


def _group_tags(keep: list[int], ids: list, groups: list, tags: list | None, row_numbers: list[int],
                log: QuarantineLog) -> tuple[list[int], dict[int, list[str]]]:
    """Rows of groups whose tag-giving rows agree, and each grouped row's group tags (raw index -> tags).

    A group whose rows give different tag sets is quarantined whole (every row, with the two sets that
    differ). Rows without a group are their own group and are returned unchanged.
    """
    members: dict[str, list[int]] = {}
    for i in keep:
        g = _group_value(groups[i])
        if g is not None:
            members.setdefault(g, []).append(i)
    dropped: set[int] = set()
    out: dict[int, list[str]] = {}
    for g, rows in members.items():
        given = [(i, _clean_tags(tags[i])) for i in rows] if tags is not None else []
        given = [(i, t) for i, t in given if t]
        sets = {frozenset(t) for _, t in given}
        if len(sets) > 1:
            (i0, t0), (i1, t1) = given[0], next((i, t) for i, t in given if frozenset(t) != frozenset(given[0][1]))
            reason = (f"group {g!r}: rows give different tags (row {row_numbers[i0]}: {sorted(set(t0))}, row "
                      f"{row_numbers[i1]}: {sorted(set(t1))}); give the group's tags on one row or the same on all")
            for i in rows:
                log.add(str(ids[i]).strip(), "manifest", reason, row=row_numbers[i])
            dropped.update(rows)
            continue
        if given:
            first = list(dict.fromkeys(given[0][1]))
            for i in rows:
                out[i] = first
    return [i for i in keep if i not in dropped], out


def _clean_captions(value: list[str] | None, rid: str, row: int, log: QuarantineLog) -> list[str]:
    """Keep caption positions stable (sub = index) and quarantine empty ones as (id, sub)."""
    if value is None:
        return []
    out = []
    for sub, cap in enumerate(value):
        text = "" if cap is None else str(cap)
        if not text.strip():
            log.add(rid, "manifest", "empty caption", sub=sub, modality="text", row=row)
        out.append(text)
    return out


def _to_float(value: object) -> float | None:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def load_tag_categories(uri: str, storage: Storage | None = None) -> dict[str, str]:
    """A (tag, category) table from CSV or Parquet -> {tag: category}. Duplicate tags must agree."""
    fs, path = locate(uri, storage)
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except (FileNotFoundError, OSError) as exc:
        raise ManifestError(f"tag-category table {uri} cannot be read: {exc}") from exc
    table = pq.read_table(io.BytesIO(data)) if uri.lower().endswith(".parquet") else pacsv.read_csv(io.BytesIO(data))
    if not {"tag", "category"} <= set(table.column_names):
        raise ManifestError(f"tag-category table {uri} needs columns 'tag' and 'category'")
    out: dict[str, str] = {}
    for tag, cat in zip(table.column("tag").to_pylist(), table.column("category").to_pylist()):
        tag, cat = str(tag).strip(), str(cat).strip()
        if tag in out and out[tag] != cat:
            raise ManifestError(f"tag-category table {uri}: tag {tag!r} is in both {out[tag]!r} and {cat!r}")
        out[tag] = cat
    return out
