"""The embedding cache: re-scoring a grown catalogue embeds only new or changed items.

An entry is (content hash -> vector) under a key that pins everything else that decides the vector:
model family and architecture, the weights (file checksum, or the seed of random weights), the
preprocessing and the dimension. Layout (:class:`~embedeval.io.layout.CacheLayout`):
``<root>/cache/<key>/<kind>/part-<modality>-<digest>.parquet`` with
columns ``content_sha256`` (string) and ``vector`` (fixed_size_list<float32>[d]); ``kind`` is ``image`` (images
and sketches share the image tower) or ``text`` (captions and ``prompt`` rows share the text tower: a prompt
string is keyed by its sha256 like a caption, so changed templates embed only the new strings). A file's name is decided by what it holds (its modality and
its entries' content hashes, see :func:`entries_path`), never by the rows' (id, sub): so no file replaces
another with different entries, whether from another modality, batch, run or catalogue, while a retried task
rewrites its own file. Each file is written atomically and only ever added, so a killed run leaves valid
entries behind; duplicates across files are harmless (the first wins).

Which entries a run uses: each committed partition lists, in its marker's ``cache_files``, the cache files
it took vectors from and the ones it added (see :class:`CacheLookup`); ``embedeval runs prune`` removes the
files no kept run lists (:mod:`embedeval.retention`).

Memory: a lookup holds the cache's hashes (and the hits' vectors) in the driver: ~100 bytes + 4*d per
entry, fine to a few million items; beyond that, shard catalogues by run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedeval.io.layout import CacheLayout
from embedeval.io.prompts import TEXT_MODALITIES
from embedeval.io.storage import Storage
from embedeval.models.base import ModelInfo

log = logging.getLogger(__name__)


def cache_kind(modality: str) -> str:
    """``text`` for strings (captions and prompts: the same text tower, so a string has one vector), else ``image``."""
    return "text" if modality in TEXT_MODALITIES else "image"


def cache_key(info: ModelInfo) -> str:
    """What decides a vector besides the content. Changing any of it means a different cache."""
    weights = info.weights_sha256 or f"{info.weights_source}#seed={info.extra.get('random_seed', '')}"
    parts = {"family": info.family, "architecture": info.architecture, "weights": weights,
             "preprocessing": info.preprocessing, "dim": info.dim}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class CacheLookup:
    """The result of :meth:`EmbeddingCache.find`: where each hash's vector is, and which file it came from."""

    index: np.ndarray          # per hash looked up: its row in ``vectors``, or -1 when missing
    vectors: pa.Array          # every entry of the files read, in file order
    files: list[str]           # the files read (relative to the storage root)
    file_of_row: np.ndarray    # per row of ``vectors``: its index into ``files``

    def files_hit(self, found: np.ndarray | None = None) -> set[str]:
        """The files that hold the vectors of the hashes found (of those where ``found`` is True, if given)."""
        rows = self.index[self.index >= 0] if found is None else self.index[found & (self.index >= 0)]
        return {self.files[i] for i in np.unique(self.file_of_row[rows]).tolist()}


class EmbeddingCache:
    """Cache entries of one model (one key). Cheap to construct; reads happen in :meth:`lookup`."""

    def __init__(self, storage: Storage, info: ModelInfo) -> None:
        self.storage = storage
        self.info = info
        self.key = cache_key(info)
        self.layout = CacheLayout(self.key)

    def describe(self) -> None:
        """Write key.json once, so a person can tell what a cache folder holds."""
        if not self.storage.exists(self.layout.key_file):
            self.storage.write_json(self.layout.key_file, {
                "spec": self.info.spec, "family": self.info.family, "architecture": self.info.architecture,
                "weights_source": self.info.weights_source, "weights_sha256": self.info.weights_sha256,
                "preprocessing": self.info.preprocessing, "dim": self.info.dim})

    def has_entries(self, kind: str) -> bool:
        return bool(self.storage.list_files(self.layout.kind_dir(kind), ".parquet"))

    def lookup(self, kind: str, hashes: list[str | None]) -> tuple[np.ndarray, pa.Array]:
        """For each hash: its index into the returned vectors, or -1 when missing. Returns (index, vectors)."""
        found = self.find(kind, hashes)
        return found.index, found.vectors

    def find(self, kind: str, hashes: list[str | None]) -> CacheLookup:
        """:meth:`lookup`, plus which cache file each vector came from."""
        files = self.storage.list_files(self.layout.kind_dir(kind), ".parquet")
        empty = CacheLookup(np.full(len(hashes), -1, np.int64), pa.array([], pa.list_(pa.float32(), self.info.dim)),
                            [], np.zeros(0, np.int64))
        if not files:
            return empty
        tables = [self.storage.read_parquet([f], columns=["content_sha256", "vector"]) for f in files]
        table = pa.concat_tables(tables)
        if table.column("vector").type.list_size != self.info.dim:
            log.warning("cache %s has vectors of the wrong dimension; ignoring it", self.storage.uri(self.layout.base))
            return empty
        keys = table.column("content_sha256")
        positions = pc.index_in(pa.array(hashes, pa.string()), value_set=keys).to_numpy(zero_copy_only=False)
        index = np.where(np.isnan(positions.astype(np.float64)), -1, positions).astype(np.int64)
        file_of_row = np.repeat(np.arange(len(files), dtype=np.int64), [t.num_rows for t in tables])
        return CacheLookup(index, table.column("vector").combine_chunks(), files, file_of_row)


def entries_path(cache: CacheLayout, modality: str, hashes: list[str]) -> str:
    """Where new entries go: ``cache/<key>/<kind>/part-<modality>-<digest>.parquet``, the digest over ``hashes``.

    Two files share a path only when they hold the same content hashes in the same order (under one key,
    the same vectors), so writing one never loses another's entries.
    """
    h = hashlib.sha256(modality.encode())
    for digest in hashes:
        h.update(f"\x1e{digest}".encode())
    return cache.entries_file(cache_kind(modality), modality, h.hexdigest()[:32])


def write_entries(storage: Storage, cache: CacheLayout, modality: str, hashes: pa.Array | pa.ChunkedArray,
                  vectors: pa.Array | pa.ChunkedArray) -> str:
    """Add (content hash -> vector) entries of one modality to the cache key ``cache``, as one new file.

    Returns the file's path (relative to the storage root).
    """
    table = pa.table({"content_sha256": hashes.cast(pa.string()), "vector": vectors})
    path = entries_path(cache, modality, table.column("content_sha256").to_pylist())
    storage.write_parquet(path, table)
    return path
