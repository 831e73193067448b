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

Memory: a lookup holds the cache's hashes (and the hits' vectors) in the driver: ~100 bytes + 4*d per
entry, fine to a few million items; beyond that, shard catalogues by run.
"""

from __future__ import annotations

import hashlib
import json
import logging

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
        files = self.storage.list_files(self.layout.kind_dir(kind), ".parquet")
        if not files:
            return np.full(len(hashes), -1, np.int64), pa.array([], pa.list_(pa.float32(), self.info.dim))
        table = self.storage.read_parquet(files, columns=["content_sha256", "vector"])
        if table.column("vector").type.list_size != self.info.dim:
            log.warning("cache %s has vectors of the wrong dimension; ignoring it", self.storage.uri(self.layout.base))
            return np.full(len(hashes), -1, np.int64), pa.array([], pa.list_(pa.float32(), self.info.dim))
        keys = table.column("content_sha256")
        positions = pc.index_in(pa.array(hashes, pa.string()), value_set=keys).to_numpy(zero_copy_only=False)
        index = np.where(np.isnan(positions.astype(np.float64)), -1, positions).astype(np.int64)
        return index, table.column("vector").combine_chunks()


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
                  vectors: pa.Array | pa.ChunkedArray) -> None:
    """Add (content hash -> vector) entries of one modality to the cache key ``cache``, as one new file."""
    table = pa.table({"content_sha256": hashes.cast(pa.string()), "vector": vectors})
    storage.write_parquet(entries_path(cache, modality, table.column("content_sha256").to_pylist()), table)
