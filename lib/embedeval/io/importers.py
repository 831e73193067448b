"""Write an embedeval manifest (one Parquet file) from a dataset layout users already have.

One function per layout; each lists or reads its source, builds the manifest columns and writes them
with :func:`write_manifest`:

- :func:`import_karpathy`: Flickr30K / COCO Karpathy-split JSON (``dataset_flickr30k.json``,
  ``dataset_coco.json``) -> id, image, captions, split, karpathy_split.
- :func:`import_sketchy`: Sketchy (Extended) ``photo/<variant>/<class>/*`` and ``sketch/<variant>/<class>/*``
  -> id, image or sketch, label, photo_id (sketch rows), class_split (with an unseen-class list).
- :func:`import_tu_berlin`: TU-Berlin ``<root>/<class>/<n>.png`` sketches -> id, sketch, label, class_split.
- :func:`import_imagefolder`: ``<root>/<class>/.../<file>`` -> id, image (or sketch), label.

Paths. A media path is written relative to the manifest's folder when the media root lies inside it
(the folder can then be moved as a whole), else as an absolute path or ``s3://`` URI. Either way the
media root must lie inside the manifest's folder or one of ``allowed_roots`` (the run config's key of
the same name): otherwise the import fails, because :func:`embedeval.io.manifest.load_manifest` would
quarantine every row. Paths the source names that would leave the media root (``..``) are an error.

Missing files. A file the Karpathy JSON names but the images folder lacks is **kept** in the manifest:
the JSON is not checked against the folder (that would be one request per image on S3), and the embed
stage quarantines the row with its reason, so the counts still add up. The folder layouts list what is
there, so every path they write exists; files that are not images (by suffix), hidden files and files
outside the expected depth are skipped and counted in :attr:`ImportResult.counts`.

Ids are stable (the same source gives the same ids): Flickr30K the file name's stem, COCO the
``cocoid``, folder layouts ``<class>/<stem>`` (ImageFolder: ``<class>/<sub/folders>/<stem>``). Two files
that would get the same id are an error naming both.

Every problem with the source (unreadable or malformed JSON, a missing key, an unknown split or class,
a root outside the allowed roots) is an :class:`ImporterError` whose one-line message names the file,
the key or the entry. Memory: the manifest is built in memory, O(rows) strings.
"""

from __future__ import annotations

import difflib
import json
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from embedeval.errors import EmbedevalError
from embedeval.io.manifest import inside_roots, manifest_folder, normalise_roots
from embedeval.io.storage import Storage, StorageError, is_s3_uri, locate, storage_at

#: Suffixes (lower case) of the files the folder layouts take as images; others are skipped and counted.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
KARPATHY_SPLITS = ("train", "val", "test", "restval")
#: Karpathy split -> manifest ``split`` (rankability fits on train and evaluates on test). ``val`` and
#: ``restval`` are not test images in any protocol, so they join the fit; the original stays in
#: ``karpathy_split``.
SPLIT_OF_KARPATHY = {"train": "train", "restval": "train", "val": "train", "test": "test"}
SKETCHY_VARIANT = "tx_000000000000"
LAYOUTS = ("karpathy", "sketchy", "tu-berlin", "imagefolder")


class ImporterError(EmbedevalError, ValueError):
    """The source layout cannot be imported; the message names the file, key or entry and the fix."""


@dataclass(frozen=True)
class ImportResult:
    """What was written: the manifest's URI, its rows and columns, counts and notes for the user."""

    manifest: str
    rows: int
    columns: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        out = [f"manifest: {self.manifest} ({self.rows} rows; columns {', '.join(self.columns)})"]
        if counts:
            out.append(f"  {counts}")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


# --- Karpathy JSON ---------------------------------------------------------------------------------

def import_karpathy(json_uri: str, images_root: str, out: str, *, splits: list[str] | None = None,
                    limit: int | None = None, offset: int = 0, allowed_roots: list[str] | None = None,
                    via: Storage | None = None) -> ImportResult:
    """Karpathy-split JSON (Flickr30K, Flickr8K or COCO) -> a manifest at ``out``.

    ``json_uri``: ``{"images": [{"filename", "split", "sentences": [{"raw", ...}], "filepath" and
    "cocoid" (COCO)}], "dataset": "flickr30k" | "coco" | ...}``. COCO is ``dataset == "coco"``, or, without
    a ``dataset`` key, images that carry ``cocoid``. ``images_root``: the folder holding ``filepath/filename``
    (COCO: e.g. ``val2014/COCO_val2014_...jpg``) or ``filename`` (Flickr).

    Rows, in file order: id (COCO ``cocoid``, else the file name's stem), image, captions (every
    sentence's ``raw`` text, in order; empty ones are quarantined later by the manifest reader), split
    (:data:`SPLIT_OF_KARPATHY`) and karpathy_split (the original). ``splits`` keeps only images of those
    Karpathy splits (e.g. ``["test"]``: Flickr30K's 1k or COCO's 5k test images); then ``offset`` and
    ``limit`` cut the list (COCO 1k fold k: ``splits=["test"], offset=1000 * k, limit=1000``).
    Images named but missing from ``images_root`` are kept (see the module docstring).
    """
    for s in splits or []:
        if s not in KARPATHY_SPLITS:
            raise ImporterError(f"unknown Karpathy split {s!r}; use {', '.join(KARPATHY_SPLITS)}")
    if offset < 0 or (limit is not None and limit < 1):
        raise ImporterError(f"offset must be >= 0 and limit >= 1 (got offset={offset}, limit={limit})")
    data = _read_json(json_uri, via)
    if not isinstance(data, dict):
        raise ImporterError(f"{json_uri}: the top level must be a JSON object with the key 'images'")
    images = data.get("images")
    if not isinstance(images, list):
        raise ImporterError(f"{json_uri}: " + ("has no key 'images'" if images is None
                                                 else "'images' must be a list of objects"))
    dataset = data.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise ImporterError(f"{json_uri}: 'dataset' must be a string such as 'coco' or 'flickr30k'")
    if dataset is None:
        is_coco = bool(images) and isinstance(images[0], dict) and "cocoid" in images[0]
    else:
        is_coco = dataset.lower() == "coco"

    target = _Target(out, allowed_roots, via)
    root = target.media_root(images_root, "images")
    parsed: list[_KarpathyImage] = []
    first_of: dict[str, int] = {}
    for i, entry in enumerate(images):
        image = _karpathy_image(entry, f"{json_uri}: images[{i}]", is_coco)
        if image.id in first_of:
            raise ImporterError(f"{json_uri}: images[{i}] and images[{first_of[image.id]}] both give the id "
                                f"{image.id!r}")
        first_of[image.id] = i
        if not splits or image.split in splits:
            parsed.append(image)
    chosen = parsed[offset:None if limit is None else offset + limit]
    if not chosen:
        raise ImporterError(f"{json_uri}: no image left to import ({len(images)} in the file, {len(parsed)} in "
                            f"splits {', '.join(splits or KARPATHY_SPLITS)}, offset {offset})")
    table = pa.table({
        "id": pa.array([im.id for im in chosen], pa.string()),
        "image": pa.array([target.media_value(root, im.rel) for im in chosen], pa.string()),
        "captions": pa.array([im.captions for im in chosen], pa.list_(pa.string())),
        "split": pa.array([SPLIT_OF_KARPATHY[im.split] for im in chosen], pa.string()),
        "karpathy_split": pa.array([im.split for im in chosen], pa.string()),
    })
    counts = {"images": len(chosen), "captions": sum(len(im.captions) for im in chosen)}
    for split in KARPATHY_SPLITS:
        n = sum(im.split == split for im in chosen)
        if n:
            counts[split] = n
    return target.write(table, "karpathy", json_uri, counts)


@dataclass(frozen=True)
class _KarpathyImage:
    id: str
    rel: str              # below the images root
    captions: list[str]
    split: str            # the Karpathy split


def _karpathy_image(entry: Any, where: str, is_coco: bool) -> _KarpathyImage:
    """One ``images[i]`` entry, checked: every key it needs, a known split, a path inside the images root."""
    if not isinstance(entry, dict):
        raise ImporterError(f"{where} is not a JSON object")
    split = _key(entry, "split", str, where)
    if split not in KARPATHY_SPLITS:
        raise ImporterError(f"{where}: split {split!r} is not one of {', '.join(KARPATHY_SPLITS)}")
    filename = _key(entry, "filename", str, where)
    captions = []
    for k, sentence in enumerate(_key(entry, "sentences", list, where)):
        if not isinstance(sentence, dict):
            raise ImporterError(f"{where}.sentences[{k}] is not a JSON object")
        captions.append(_key(sentence, "raw", str, f"{where}.sentences[{k}]"))
    if is_coco:
        rel = posixpath.join(_key(entry, "filepath", str, where), filename)
        rid = str(_key(entry, "cocoid", (int, str), where))
    else:
        rel = filename
        rid = posixpath.splitext(posixpath.basename(filename))[0]
    if not rid:
        raise ImporterError(f"{where}: empty id (filename {filename!r})")
    return _KarpathyImage(rid, _inside(rel, f"{where}: path {rel!r}"), captions, split)


# --- class-folder layouts -------------------------------------------------------------------------

def import_sketchy(root: str, out: str, *, unseen: str | None = None, variant: str = SKETCHY_VARIANT,
                   allowed_roots: list[str] | None = None, via: Storage | None = None) -> ImportResult:
    """Sketchy / Sketchy-Extended -> one row per photo and one per sketch, labelled by class folder.

    Layout: ``<root>/photo/<variant>/<class>/<name>.jpg`` and ``<root>/sketch/<variant>/<class>/<name>-<n>.png``.
    Photo rows: id ``<class>/<name>``, image. Sketch rows: id ``<class>/<name>-<n>``, sketch, and
    photo_id, the id of the photo its name's prefix names (null, and counted, when that photo is absent).
    Every row: label (the class), and with ``unseen`` (a text file, one class per line) class_split
    seen/unseen. Photos first, then sketches, each sorted by id.
    """
    target = _Target(out, allowed_roots, via)
    base = target.media_root(root, "Sketchy")
    photos, skipped_p = _class_files(base, f"photo/{variant}", via, nested=False)
    sketches, skipped_s = _class_files(base, f"sketch/{variant}", via, nested=False)
    for what, found in (("photo", photos), ("sketch", sketches)):
        if not found:
            raise ImporterError(f"no {what} files under {base}/{what}/{variant}; expected "
                                f"<root>/{what}/{variant}/<class>/<file> (another augmentation: --variant)")
    photo_ids = {f.id for f in photos}
    photo_of = []
    for f in sketches:
        name = posixpath.basename(f.id)
        prefix, dash, n = name.rpartition("-")
        pid = f"{f.label}/{prefix}" if dash and n.isdigit() else None
        photo_of.append(pid if pid in photo_ids else None)
    files = photos + sketches
    _check_unique(files)
    labels = [f.label for f in files]
    columns: dict[str, pa.Array] = {
        "id": pa.array([f.id for f in files], pa.string()),
        "image": pa.array([target.media_value(base, f.rel) for f in photos] + [None] * len(sketches), pa.string()),
        "sketch": pa.array([None] * len(photos) + [target.media_value(base, f.rel) for f in sketches], pa.string()),
        "label": pa.array(labels, pa.string()),
        "photo_id": pa.array([None] * len(photos) + photo_of, pa.string()),
    }
    counts = {"photos": len(photos), "sketches": len(sketches), "classes": len(set(labels))}
    orphans = photo_of.count(None)
    notes = [f"{orphans} sketches name no photo of their class (photo_id is null)"] if orphans else []
    _add_class_split(columns, counts, labels, unseen, via)
    counts["skipped files"] = skipped_p + skipped_s
    return target.write(pa.table(columns), "sketchy", root, counts, notes)


def import_tu_berlin(root: str, out: str, *, unseen: str | None = None, allowed_roots: list[str] | None = None,
                     via: Storage | None = None) -> ImportResult:
    """TU-Berlin sketches ``<root>/<class>/<n>.png`` -> id ``<class>/<n>``, sketch, label, class_split.

    ``root`` is the folder of class folders (in the official download, ``png/``; ``filelist.txt`` there is
    skipped). ``unseen``: a text file, one class per line -> class_split seen/unseen. Rows sorted by id.
    """
    target = _Target(out, allowed_roots, via)
    base = target.media_root(root, "TU-Berlin")
    files, skipped = _class_files(base, "", via, nested=False)
    if not files:
        raise ImporterError(f"no sketch files under {base}; expected <root>/<class>/<n>.png")
    columns = _labelled_columns(target, base, files, "sketch")
    labels = [f.label for f in files]
    counts = {"sketches": len(files), "classes": len(set(labels))}
    _add_class_split(columns, counts, labels, unseen, via)
    counts["skipped files"] = skipped
    return target.write(pa.table(columns), "tu-berlin", root, counts)


def import_imagefolder(root: str, out: str, *, column: str = "image", allowed_roots: list[str] | None = None,
                       via: Storage | None = None) -> ImportResult:
    """torchvision's ImageFolder layout ``<root>/<class>/.../<file>`` -> id, ``column`` (image or sketch), label.

    The label is the top-level folder; files in sub-folders of a class belong to it (as in torchvision).
    Ids are ``<class>/<path below the class without the suffix>``. Files directly in ``root`` are skipped.
    """
    if column not in ("image", "sketch"):
        raise ImporterError(f"column must be 'image' or 'sketch', not {column!r}")
    target = _Target(out, allowed_roots, via)
    base = target.media_root(root, "ImageFolder")
    files, skipped = _class_files(base, "", via, nested=True)
    if not files:
        raise ImporterError(f"no image files under {base}; expected <root>/<class>/<file>")
    table = pa.table(_labelled_columns(target, base, files, column))
    counts = {"files": len(files), "classes": len({f.label for f in files}), "skipped files": skipped}
    return target.write(table, "imagefolder", root, counts)


# --- shared parts ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ClassFile:
    id: str       # <class>/<stem>
    label: str    # <class>
    rel: str      # path below the media root


def _labelled_columns(target: "_Target", base: str, files: list[_ClassFile], column: str) -> dict[str, pa.Array]:
    """id, the media column and label of class-folder files (ids checked unique first)."""
    _check_unique(files)
    return {
        "id": pa.array([f.id for f in files], pa.string()),
        column: pa.array([target.media_value(base, f.rel) for f in files], pa.string()),
        "label": pa.array([f.label for f in files], pa.string()),
    }


class _Target:
    """Where the manifest goes, the roots its paths may point into, and how a path is written."""

    def __init__(self, out: str, allowed_roots: list[str] | None, via: Storage | None) -> None:
        if not out.lower().endswith(".parquet"):
            raise ImporterError(f"output {out!r} must be a .parquet file")
        self.out = out
        self.via = via
        self.folder = manifest_folder(out)
        self.roots = normalise_roots(self.folder, allowed_roots)
        self.outside: list[str] = []   # media roots outside the manifest's folder (absolute paths)

    def media_root(self, root: str, what: str) -> str:
        """``root`` as an absolute path / normalised URI, checked to lie inside the allowed roots."""
        absolute = ("s3://" + posixpath.normpath(root[len("s3://"):]) if is_s3_uri(root)
                    else str(Path(root).expanduser().resolve()))
        if not inside_roots(absolute, self.roots):
            raise ImporterError(
                f"{what} root {absolute} is outside the manifest's folder {self.folder} and the allowed roots: "
                f"write the manifest into a folder that contains it, or pass --allowed-root {absolute} "
                "(and list it under allowed_roots in the run config)")
        if not inside_roots(absolute, [self.folder]):
            self.outside.append(absolute)
        return absolute

    def media_value(self, root: str, rel: str) -> str:
        """The manifest value of ``root/rel``: relative to the manifest's folder when inside it, else absolute."""
        full = f"{root}/{rel}" if rel else root
        if full.startswith(self.folder.rstrip("/") + "/"):
            return full[len(self.folder.rstrip("/")) + 1:]
        return full

    def write(self, table: pa.Table, layout: str, source: str, counts: dict[str, int],
              notes: list[str] | None = None) -> ImportResult:
        notes = list(notes or [])
        if self.outside:
            notes.append(f"paths under {', '.join(self.outside)} are absolute: list it under allowed_roots "
                         "in the run config")
        write_manifest(self.out, table, {"embedeval.importer": layout, "embedeval.import_source": source}, self.via)
        return ImportResult(self.out, table.num_rows, tuple(table.column_names), counts, tuple(notes))


def write_manifest(out: str, table: pa.Table, metadata: dict[str, str] | None = None,
                   via: Storage | None = None) -> None:
    """Write ``table`` as one Parquet file at ``out`` (local or ``s3://``), atomically; polars and DuckDB read it."""
    parent, name = posixpath.split(out.rstrip("/")) if is_s3_uri(out) else (
        str(Path(out).expanduser().resolve().parent), Path(out).name)
    try:
        storage_at(parent, via).write_parquet(name, table, metadata)
    except (OSError, StorageError) as exc:
        raise ImporterError(f"cannot write the manifest {out}: {exc}") from exc


def _class_files(base: str, under: str, via: Storage | None, *, nested: bool) -> tuple[list[_ClassFile], int]:
    """Image files at ``base/under/<class>/<file>`` (``nested``: at any depth below a class), sorted by id,
    and how many other files were skipped (not an image by suffix, hidden, or at another depth)."""
    try:
        listed = storage_at(base, via).list_files(under)
    except (OSError, StorageError) as exc:
        raise ImporterError(f"cannot list {base}/{under}: {exc}") from exc
    found: list[_ClassFile] = []
    skipped = 0
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    for rel in listed:
        parts = rel[len(prefix):].split("/") if rel.startswith(prefix) else []
        depth_ok = len(parts) >= 2 if nested else len(parts) == 2
        if (not depth_ok or any(p.startswith(".") for p in parts)
                or posixpath.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES):
            skipped += 1
            continue
        label = parts[0]
        stem = posixpath.splitext("/".join(parts[1:]))[0]
        found.append(_ClassFile(f"{label}/{stem}", label, rel))
    found.sort(key=lambda f: f.id)
    return found, skipped


def _check_unique(files: list[_ClassFile]) -> None:
    seen: dict[str, str] = {}
    for f in files:
        if f.id in seen:
            raise ImporterError(f"two files give the id {f.id!r}: {seen[f.id]} and {f.rel}; rename one")
        seen[f.id] = f.rel


def _add_class_split(columns: dict[str, pa.Array], counts: dict[str, int], labels: list[str],
                     unseen: str | None, via: Storage | None) -> None:
    if unseen is None:
        return
    classes = sorted(set(labels))
    chosen = _unseen_classes(unseen, classes, via)
    columns["class_split"] = pa.array(["unseen" if c in chosen else "seen" for c in labels], pa.string())
    counts["unseen classes"] = len(chosen)


def _unseen_classes(uri: str, classes: list[str], via: Storage | None) -> set[str]:
    """The class folders a one-class-per-line file names (blank lines and ``#`` comments ignored).

    A name matches its folder exactly, or else after ignoring case and the difference between spaces,
    ``_`` and ``-`` when that matches one folder only (lists often write ``alarm_clock`` for ``alarm clock``).
    A name that matches no folder is an error: a typo would silently make an unseen class seen.
    """
    text = _read_bytes(uri, via).decode("utf-8-sig", errors="replace")
    by_key: dict[str, list[str]] = {}
    for c in classes:
        by_key.setdefault(_class_key(c), []).append(c)
    chosen: set[str] = set()
    unknown: list[str] = []
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name in classes:
            chosen.add(name)
        elif len(by_key.get(_class_key(name), [])) == 1:
            chosen.add(by_key[_class_key(name)][0])
        else:
            unknown.append(name)
    if unknown:
        hints = [f"{u!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, classes, 1)) else "")
                 for u in unknown[:5]]
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ImporterError(f"unseen-class file {uri}: no class folder named {', '.join(hints)}{more}")
    if not chosen:
        raise ImporterError(f"unseen-class file {uri} names no class; write one class folder name per line")
    return chosen


def _class_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def _inside(rel: str, what: str) -> str:
    """``rel`` normalised; an error if it is absolute or leaves its root with ``..``."""
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
        raise ImporterError(f"{what} leaves the images root; paths in the JSON must be relative to it")
    return norm


def _key(entry: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in entry:
        raise ImporterError(f"{where} has no key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise ImporterError(f"{where}: {key!r} must be {names}, not {type(value).__name__}")
    return value


def _read_bytes(uri: str, via: Storage | None) -> bytes:
    try:
        fs, path = locate(uri, via)
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ImporterError(f"{uri} does not exist") from exc
    except OSError as exc:
        raise ImporterError(f"{uri} cannot be read: {exc}") from exc


def _read_json(uri: str, via: Storage | None) -> Any:
    data = _read_bytes(uri, via)
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ImporterError(f"{uri} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ImporterError(f"{uri} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
