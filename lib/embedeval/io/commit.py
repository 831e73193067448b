"""The one commit protocol of every stage: write the files, then a marker that lists them; readers trust only it.

A stage writes each output file (:func:`write_table`, :func:`write_file` return its :class:`CommittedFile`:
path, rows, sha256), then calls :func:`commit` on the folder, which writes ``<folder>/_COMMITTED.json``
listing those files (plus the stage's own fields) as one small atomic write. Until then the folder does not
exist for readers: :func:`read_commit` returns None, and a reader reads only the files the marker lists
(:func:`read_committed_table` also checks the rows and the checksum). A stage that rewrites a committed
folder first calls :func:`uncommit`, so no reader ever pairs an old marker with a half-written new file.

Used by the embeddings (one marker per partition), the scoring blocks and units, the score stage
(``scores/``) and the report (``report/``); paths come from :mod:`embedeval.io.layout`.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedeval.errors import EmbedevalError
from embedeval.io.layout import marker_in
from embedeval.io.storage import Storage


class CommitError(EmbedevalError, ValueError):
    """A commit marker, or a file it lists, does not hold what the marker says; the message names it."""


@dataclass(frozen=True)
class CommittedFile:
    """One file a marker lists. ``rows`` is None for files that are not tables (HTML, PNG)."""

    path: str            # relative to the storage root
    rows: int | None
    sha256: str          # of the bytes written, unless the stage says otherwise (embeddings: of the vectors)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CommittedFile":
        return cls(str(d["path"]), None if d.get("rows") is None else int(d["rows"]), str(d["sha256"]))


@dataclass
class Commit:
    """A folder's marker as read back: the files it lists and the stage's own fields."""

    folder: str
    files: list[CommittedFile]
    fields: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> CommittedFile | None:
        """The listed file at ``<folder>/<name>``, or None when the marker does not list it."""
        want = posixpath.join(self.folder, name)
        return next((f for f in self.files if f.path == want), None)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(storage: Storage, rel: str, data: bytes, rows: int | None = None) -> CommittedFile:
    """Write one file (atomically, see :meth:`Storage.write_bytes`) and return its marker entry."""
    storage.write_bytes(rel, data)
    return CommittedFile(rel, rows, _sha256(data))


def write_table(storage: Storage, rel: str, table: pa.Table, metadata: dict[str, str] | None = None) -> CommittedFile:
    """Write one Parquet file (see :meth:`Storage.write_parquet`) and return its marker entry."""
    return CommittedFile(rel, table.num_rows, storage.write_parquet(rel, table, metadata=metadata))


def commit(storage: Storage, folder: str, files: list[CommittedFile], *, committed_at: float | None = None,
           **fields: Any) -> None:
    """Make ``folder`` visible: write its marker listing ``files`` and ``fields``. Call after every file is written."""
    body = dict(fields)
    body["files"] = [f.as_dict() for f in files]
    body["committed_at"] = time.time() if committed_at is None else committed_at
    storage.write_json(marker_in(folder), body)


def uncommit(storage: Storage, folder: str) -> None:
    """Make ``folder`` invisible again (its marker removed) before its files are rewritten."""
    storage.delete_file(marker_in(folder))


def read_commit(storage: Storage, folder: str) -> Commit | None:
    """The folder's marker, or None when it has none. Raises :class:`CommitError` for a malformed marker."""
    rel = marker_in(folder)
    if not storage.exists(rel):
        return None
    try:
        body = storage.read_json(rel)
        files = [CommittedFile.from_dict(f) for f in body.pop("files")]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CommitError(f"commit marker {storage.uri(rel)} is malformed ({type(exc).__name__}: {exc}); "
                          "delete it and rerun the stage that wrote it") from exc
    return Commit(folder, files, body)


def read_committed_table(storage: Storage, entry: CommittedFile, columns: list[str] | None = None) -> pa.Table:
    """Read a listed Parquet file, checking it against its entry (checksum and rows): the file a reader
    gets is the one the marker committed, or a :class:`CommitError` naming it."""
    data = storage.read_bytes(entry.path)
    if _sha256(data) != entry.sha256:
        raise CommitError(f"{storage.uri(entry.path)} is not the file its commit marker lists (checksum differs): "
                          "it was rewritten after the commit; rerun the stage that wrote it")
    table = pq.read_table(pa.BufferReader(data), columns=columns)
    if entry.rows is not None and table.num_rows != entry.rows:
        raise CommitError(f"{storage.uri(entry.path)}: the marker says {entry.rows} rows, the file holds "
                          f"{table.num_rows}; rerun the stage that wrote it")
    return table
