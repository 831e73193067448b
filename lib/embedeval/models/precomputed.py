"""``precomputed:<uri>[?dim=<d>&arch=<name>]`` — vectors computed elsewhere, imported instead of embedded.

The URI is a Parquet file or a folder of Parquet files (local or ``s3://``) with columns ``id`` (string),
``sub`` (int, optional, default 0), ``vector`` (``fixed_size_list<float32>`` or any list of floats) and
optionally ``modality`` (image/sketch/text/prompt; without it every row is an ``image`` row).

``prompt`` rows are the model's zero-shot prompt vectors (:mod:`embedeval.io.prompts`): their ``id`` is a
manifest label (``sub`` = template index) or an attribute axis end ``attr:<name>:low`` / ``attr:<name>:high``,
not a manifest id; the embed stage commits them as the ``prompt`` partition.

Which dimension is right: ``?dim=`` in the spec (or ``dim_hint``) when given; otherwise the length of
the first non-null vector (files in sorted order, rows in file order). The first row rather than the
majority, because it is cheap to find without reading every vector and easy to explain: when the first
row is the odd one out, every other row is reported as wrong-dimension and the report says which
dimension was expected, so the fix (``?dim=``) is obvious.

Rows that cannot be used are not dropped silently: :func:`split_precomputed_rows` returns them with a
reason (missing id/vector, wrong dimension, NaN/Inf, zero vector, duplicate (id, sub)), the file and the
row number, so the pipeline can quarantine and report them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from embedeval.io.prompts import PROMPT_MODALITY
from embedeval.io.storage import Storage, StorageError, is_s3_uri, storage_at
from embedeval.models.base import ALL_MODALITIES, ModelError, ModelInfo
from embedeval.models.family import ModelFamily, register_family
from embedeval.models.spec import LoadOptions, ParsedSpec, did_you_mean

FAMILY = "precomputed"
FORMS = ("precomputed:<parquet file or folder, local or s3://>[?dim=<d>][&arch=<name of the model that made them>]",)
DEFAULT_MODALITY = "image"
#: The ``modality`` values a vectors file may hold: the catalogue's modalities and prompt vectors.
MODALITIES: tuple[str, ...] = (*ALL_MODALITIES, PROMPT_MODALITY)
_OPTIONS = ("dim", "arch")

BAD_ROWS_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("sub", pa.int16()),
    pa.field("reason", pa.string()),
    pa.field("file", pa.string()),
    pa.field("row", pa.int64()),
])


@dataclass(frozen=True)
class PrecomputedRows:
    """Usable rows (id, sub, vector as ``fixed_size_list<float32>[dim]``) and refused rows with reasons."""

    good: pa.Table
    bad: pa.Table
    dim: int


def parse(spec: str, rest: str) -> ParsedSpec:
    uri, _, query = rest.partition("?")
    if not uri:
        raise ModelError(f"model spec {spec!r} names no data; valid form: {FORMS[0]}")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    for key in options:
        if key not in _OPTIONS:
            raise ModelError(f"model spec {spec!r}: unknown option {key!r}{did_you_mean(key, _OPTIONS)}; "
                             f"options: {', '.join(_OPTIONS)}")
    if "dim" in options and not (options["dim"].isdigit() and int(options["dim"]) > 0):
        raise ModelError(f"model spec {spec!r}: dim must be a positive integer, got {options['dim']!r}")
    return ParsedSpec(spec=spec, family=FAMILY, architecture=options.get("arch", "precomputed"), weights=uri,
                      options=options, kind="data")


def load(parsed: ParsedSpec, opts: LoadOptions) -> "PrecomputedModel":
    """Check the data exists and fix its dimension and modalities; the vectors are read later, per modality."""
    # absolute, so the vectors are found again from a Ray worker whose working directory differs
    uri = parsed.weights if is_s3_uri(parsed.weights) else str(Path(parsed.weights).expanduser().resolve())
    dim = int(parsed.options["dim"]) if "dim" in parsed.options else None
    dim_hint = opts.dim_hint
    if dim is not None and dim_hint is not None and dim != dim_hint:
        raise ModelError(f"{parsed.spec}: the spec says dim={dim} but dim_hint={dim_hint}")
    dim = dim if dim is not None else dim_hint
    storage, files = _parquet_files(uri, opts.storage)
    modalities = _modalities(storage, files, uri)
    if dim is None:
        dim = _first_vector_length(storage, files, uri)
    info = ModelInfo(
        spec=parsed.spec,
        family=FAMILY,
        architecture=parsed.architecture,
        weights_source=uri,
        weights_sha256=None,
        weights_random=False,
        preprocessing="none: vectors imported from " + uri,
        dim=dim,
        modalities=modalities,
        extra={"files": str(len(files))},
    )
    return PrecomputedModel(info, uri, opts.storage)


class PrecomputedModel:
    """Stands in for a model whose vectors already exist; it computes nothing."""

    def __init__(self, info: ModelInfo, uri: str, storage: Storage | None) -> None:
        self.info = info
        self.uri = uri
        self.storage = storage

    def load_vectors(self, modality: str) -> PrecomputedRows:
        """This model's good and bad rows for ``modality``, checked against ``info.dim``."""
        return load_precomputed_rows(self.uri, self.storage, modality, dim=self.info.dim)

    def keys(self, modality: str) -> pa.Table:
        """The distinct (id, sub) this model has rows for in ``modality`` (see :func:`read_precomputed_keys`)."""
        return read_precomputed_keys(self.uri, self.storage, modality)

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        raise self._refuse()

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        raise self._refuse()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise self._refuse()

    def _refuse(self) -> ModelError:
        return ModelError(f"{self.info.spec} holds precomputed vectors and cannot embed new inputs; "
                          "import them with load_vectors() / load_precomputed_vectors()")


def load_precomputed_vectors(uri: str, storage: Storage | None = None, modality: str = DEFAULT_MODALITY,
                             dim: int | None = None) -> pa.Table:
    """The usable rows for ``modality``: id (string), sub (int16), vector (fixed_size_list<float32>[d]).

    ``storage`` is the handle whose S3 settings reach an s3:// ``uri`` (None: the AWS environment's)."""
    return load_precomputed_rows(uri, storage, modality, dim=dim).good


def load_precomputed_rows(uri: str, storage: Storage | None = None, modality: str = DEFAULT_MODALITY,
                          dim: int | None = None) -> PrecomputedRows:
    """Read ``uri`` and split its ``modality`` rows into good and bad (see :func:`split_precomputed_rows`)."""
    return split_precomputed_rows(read_precomputed_table(uri, storage, modality), dim=dim)


def read_precomputed_table(uri: str, storage: Storage | None = None, modality: str = DEFAULT_MODALITY) -> pa.Table:
    """The raw rows of ``modality``: id (string), sub (int16), vector (list<float32>), file, row.

    Memory: the whole selection is held in memory (vectors as float32).
    """
    if modality not in MODALITIES:
        raise ModelError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    storage, files = _parquet_files(uri, storage)
    tables = [_read_file(storage, rel, uri, modality) for rel in files]
    return pa.concat_tables(tables) if tables else _empty_raw()


def read_precomputed_keys(uri: str, storage: Storage | None = None, modality: str = DEFAULT_MODALITY) -> pa.Table:
    """The distinct (id, sub) of ``modality``'s rows, good or bad, without their vectors.

    What a vectors-only manifest embeds: rows without an id are left out (they match no manifest item);
    a missing ``sub`` is 0, as when the vectors are read. Memory: O(rows) ids, no vectors.
    """
    if modality not in MODALITIES:
        raise ModelError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    storage, files = _parquet_files(uri, storage)
    parts = []
    for rel in files:
        names = _schema(storage, rel).names
        try:
            table = storage.read_parquet([rel], columns=[c for c in ("id", "sub", "modality") if c in names])
        except (OSError, StorageError, pa.ArrowInvalid) as exc:
            raise ModelError(f"precomputed vectors: cannot read {storage.uri(rel)}: {exc}") from exc
        if "modality" in table.column_names:
            table = table.filter(pc.fill_null(pc.equal(table.column("modality"), modality), False))
        elif modality != DEFAULT_MODALITY:
            continue
        try:
            sub = (pc.fill_null(table.column("sub"), 0).cast(pa.int16()) if "sub" in table.column_names
                   else pa.array(np.zeros(table.num_rows, np.int16)))
            parts.append(pa.table({"id": table.column("id").cast(pa.string()), "sub": sub}))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ModelError(f"precomputed vectors: {storage.uri(rel)} has unusable id/sub types "
                             f"({table.schema}): {exc}") from exc
    if not parts:
        return pa.table({"id": pa.array([], pa.string()), "sub": pa.array([], pa.int16())})
    keys = pa.concat_tables(parts)
    keys = keys.filter(pc.fill_null(pc.not_equal(keys.column("id"), ""), False))
    return keys.group_by(["id", "sub"], use_threads=False).aggregate([])


def split_precomputed_rows(table: pa.Table, dim: int | None = None) -> PrecomputedRows:
    """Split raw rows (id, sub, vector, optional file/row) into usable rows and refused rows.

    Each refused row gets the first reason that applies, checked in this order: missing id, missing
    vector, wrong dimension, non-finite values (NaN/Inf, or null elements), zero vector, duplicate
    (id, sub). Duplicates are counted among rows that passed the other checks, and ALL copies are
    refused: which copy is right cannot be known. ``dim`` defaults to the first non-null vector's length.
    """
    n = table.num_rows
    ids = table.column("id").cast(pa.string())
    subs = table.column("sub").cast(pa.int16()) if "sub" in table.column_names else pa.array(np.zeros(n, np.int16))
    vectors = table.column("vector")
    if vectors.type != pa.list_(pa.float32()):
        vectors = vectors.cast(pa.list_(pa.float32()))
    files = table.column("file") if "file" in table.column_names else pa.array([""] * n, pa.string())
    rows = table.column("row") if "row" in table.column_names else pa.array(np.arange(n, dtype=np.int64))

    lengths = pc.list_value_length(vectors).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    if dim is None:
        present = np.flatnonzero(lengths >= 0)
        dim = int(lengths[present[0]]) if len(present) else 0

    reasons = np.full(n, "", dtype=object)
    id_missing = pc.fill_null(pc.equal(ids, ""), True).to_numpy(zero_copy_only=False)
    _set_reason(reasons, id_missing, "missing id")
    _set_reason(reasons, lengths < 0, "missing vector")
    wrong = (lengths >= 0) & (lengths != dim) & (reasons == "")
    for i in np.flatnonzero(wrong):
        reasons[i] = f"wrong dimension: {lengths[i]} values, expected {dim}"

    candidates = np.flatnonzero(reasons == "")
    values = _dense(vectors.take(pa.array(candidates)), dim)
    finite = np.isfinite(values).all(axis=1)
    zero = finite & ~(values != 0).any(axis=1)
    reasons[candidates[~finite]] = "non-finite values (NaN or Inf)"
    reasons[candidates[zero]] = "zero vector"

    remaining = np.flatnonzero(reasons == "")
    if len(remaining):
        id_codes = pc.dictionary_encode(ids.take(pa.array(remaining))).combine_chunks().indices
        key = id_codes.to_numpy().astype(np.int64) * 65536 + \
            (subs.take(pa.array(remaining)).to_numpy(zero_copy_only=False).astype(np.int64) + 32768)
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        for i, c in zip(remaining[counts[inverse] > 1], counts[inverse][counts[inverse] > 1]):
            reasons[i] = f"duplicate (id, sub): {c} rows"

    good_mask = reasons == ""
    good_idx = pa.array(np.flatnonzero(good_mask))
    good_values = values[good_mask[candidates]]
    good = pa.Table.from_arrays(
        [ids.take(good_idx), subs.take(good_idx),
         pa.FixedSizeListArray.from_arrays(pa.array(good_values.reshape(-1), pa.float32()), dim)],
        schema=pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("sub", pa.int16(), nullable=False),
                          pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)]),
    )
    bad_idx = pa.array(np.flatnonzero(~good_mask))
    bad = pa.Table.from_arrays(
        [ids.take(bad_idx), subs.take(bad_idx), pa.array(reasons[~good_mask].tolist(), pa.string()),
         files.take(bad_idx), rows.take(bad_idx)],
        schema=BAD_ROWS_SCHEMA,
    )
    return PrecomputedRows(good=good, bad=bad, dim=dim)


def _set_reason(reasons: np.ndarray, mask: np.ndarray, reason: str) -> None:
    reasons[mask & (reasons == "")] = reason


def _dense(vectors: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """(k, dim) float32 from k list values all of length ``dim``; null elements become NaN."""
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks() if vectors.num_chunks else pa.array([], pa.list_(pa.float32()))
    flat = pc.list_flatten(vectors).to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(vectors), dim)


def _parquet_files(uri: str, via: Storage | None) -> tuple[Storage, list[str]]:
    """A Storage rooted where the data is and the sorted Parquet files (relative paths) to read."""
    try:
        storage = storage_at(uri, via)
        kind = storage.fs.get_file_info(storage.path("")).type
        if kind == pafs.FileType.File:
            return storage.at(posixpath.dirname(storage.root)), [posixpath.basename(storage.root)]
        if kind == pafs.FileType.Directory:
            files = [f for f in storage.list_files(suffix=".parquet")
                     if not posixpath.basename(f).startswith(("_", "."))]
            if files:
                return storage, files
            raise ModelError(f"precomputed vectors: no .parquet files under {uri}")
    except (OSError, StorageError) as exc:
        raise ModelError(f"precomputed vectors: cannot list {uri}: {exc}") from exc
    raise ModelError(f"precomputed vectors: {uri} does not exist")


def _read_file(storage: Storage, rel: str, uri: str, modality: str) -> pa.Table:
    where = storage.uri(rel)
    names = _schema(storage, rel).names
    try:
        columns = [c for c in ("id", "sub", "vector", "modality") if c in names]
        table = storage.read_parquet([rel], columns=columns)
    except (OSError, StorageError, pa.ArrowInvalid) as exc:
        raise ModelError(f"precomputed vectors: cannot read {where}: {exc}") from exc
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    if "modality" in table.column_names:
        keep = pc.fill_null(pc.equal(table.column("modality"), modality), False)
        table, rows = table.filter(keep), rows.filter(keep.combine_chunks())
    elif modality != DEFAULT_MODALITY:
        table, rows = table.slice(0, 0), rows.slice(0, 0)
    n = table.num_rows
    try:
        sub = (pc.fill_null(table.column("sub"), 0).cast(pa.int16()) if "sub" in table.column_names
               else pa.array(np.zeros(n, np.int16)))
        vector = table.column("vector").cast(pa.list_(pa.float32()))
        ids = table.column("id").cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ModelError(f"precomputed vectors: {where} has unusable id/sub/vector types "
                         f"({table.schema}): {exc}") from exc
    return pa.table({"id": ids, "sub": sub, "vector": vector, "file": pa.array([where] * n, pa.string()),
                     "row": rows})


def _empty_raw() -> pa.Table:
    return pa.table({"id": pa.array([], pa.string()), "sub": pa.array([], pa.int16()),
                     "vector": pa.array([], pa.list_(pa.float32())), "file": pa.array([], pa.string()),
                     "row": pa.array([], pa.int64())})


def _schema(storage: Storage, rel: str) -> pa.Schema:
    """The file's schema, checked for the required columns."""
    where = storage.uri(rel)
    try:
        schema = pq.read_schema(storage.path(rel), filesystem=storage.fs)
    except (OSError, StorageError, pa.ArrowInvalid) as exc:
        raise ModelError(f"precomputed vectors: cannot read {where}: {exc}") from exc
    missing = [c for c in ("id", "vector") if c not in schema.names]
    if missing:
        raise ModelError(f"precomputed vectors: {where} lacks column(s) {missing}; it has {schema.names}. "
                         "Expected id (string), vector (list of floats), optional sub (int) and modality")
    return schema


def _modalities(storage: Storage, files: list[str], uri: str) -> tuple[str, ...]:
    found: set[str] = set()
    for rel in files:
        if "modality" not in _schema(storage, rel).names:
            found.add(DEFAULT_MODALITY)
            continue
        try:
            column = storage.read_parquet([rel], columns=["modality"]).column("modality")
        except (OSError, StorageError, pa.ArrowInvalid) as exc:
            raise ModelError(f"precomputed vectors: cannot read {storage.uri(rel)}: {exc}") from exc
        found.update(str(v) for v in pc.unique(column).to_pylist() if v is not None)
    unknown = sorted(found - set(MODALITIES))
    if unknown:
        raise ModelError(f"precomputed vectors under {uri}: unknown modality values {unknown}; "
                         f"expected {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in found)


def _first_vector_length(storage: Storage, files: list[str], uri: str) -> int:
    for rel in files:
        vtype = _schema(storage, rel).field("vector").type
        if pa.types.is_fixed_size_list(vtype):
            return int(vtype.list_size)
        try:
            with storage.fs.open_input_file(storage.path(rel)) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, columns=["vector"]):
                    lengths = pc.list_value_length(batch.column(0)).drop_null()
                    if len(lengths):
                        return int(lengths[0].as_py())
        except (OSError, pa.ArrowInvalid) as exc:
            raise ModelError(f"precomputed vectors: cannot read {storage.uri(rel)}: {exc}") from exc
    raise ModelError(f"precomputed vectors under {uri}: no non-null vector to take the dimension from; "
                     "add ?dim=<d> to the spec")


class PrecomputedFamily(ModelFamily):
    """Vectors made elsewhere: imported by the pipeline, never embedded or cached."""

    name = FAMILY
    forms = FORMS
    modalities = ALL_MODALITIES
    embeds = False
    parse = staticmethod(parse)
    load = staticmethod(load)

    def describe(self, parsed: ParsedSpec, opts: LoadOptions) -> ModelInfo:
        return load(parsed, opts).info   # loading reads only file schemas and a modality column


register_family(PrecomputedFamily())
