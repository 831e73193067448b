"""Turn a weights reference (local path, s3:// URI, hub URL) into a local file, and load it safely.

Every checkpoint is loaded with ``torch.load(weights_only=True)`` (or safetensors), so a file that carries
pickled code is refused instead of executed. The sha256 of the file actually loaded is recorded in
:class:`~embedeval.models.base.ModelInfo`, which is what makes two runs comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from embedeval.io.storage import Storage, StorageError, storage_at
from embedeval.models.base import ModelError

_CHUNK = 8 * 1024 * 1024
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
_SHOW = 5
_OPTIONAL_KEY_SUFFIX = ".num_batches_tracked"


@dataclass(frozen=True)
class WeightsFile:
    """A local weights file ready to load, where it came from, and its checksum."""

    path: str
    source: str     # "file:/abs/path.pt", "s3://bucket/key.pt" or "hub:<tag>"
    sha256: str


def downloads_disabled() -> bool:
    """``EMBEDEVAL_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) skips download attempts on air-gapped clusters,
    where waiting for a connection to time out only delays the error that explains what to do."""
    flags = (os.environ.get("EMBEDEVAL_OFFLINE", ""), os.environ.get("HF_HUB_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch_weights_file(ref: str, *, spec: str, storage: Storage | None = None,
                       cache_dir: str | None = None) -> WeightsFile:
    """A local path or ``s3://`` URI -> a local file with its checksum (s3 objects are copied first,
    reached with ``storage``'s S3 settings)."""
    if ref.startswith("s3://"):
        path = copy_s3_to_cache(ref, spec=spec, storage=storage, cache_dir=cache_dir)
        return WeightsFile(path=path, source=ref, sha256=sha256_file(path))
    local = ref[len("file://"):] if ref.startswith("file://") else ref
    path = str(Path(local).expanduser().resolve())
    if not os.path.isfile(path):
        raise ModelError(f"{spec}: weights file {path} does not exist (or is not a file)")
    return WeightsFile(path=path, source=f"file:{path}", sha256=sha256_file(path))


def s3_cache_path(uri: str, cache_dir: str | None = None) -> str:
    """``<cache_dir or ~/.cache/embedeval/weights>/<sha256(uri)[:16]>/<basename>``: the hash keeps two
    objects with the same file name apart, the basename keeps the suffix (.safetensors vs .pt)."""
    root = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "embedeval", "weights")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return os.path.join(root, digest, posixpath.basename(uri.rstrip("/")) or "weights.bin")


def copy_s3_to_cache(uri: str, *, spec: str, storage: Storage | None = None, cache_dir: str | None = None) -> str:
    """Copy an s3:// object to the local cache (streamed, atomic rename) and return the local path.

    A previous copy is reused when the object's size and modification time are unchanged, so the many
    actors of a job on one node do not each fetch the same hundreds of megabytes.
    """
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or parent in ("s3:", "s3:/"):
        raise ModelError(f"{spec}: {uri!r} is not an s3://bucket/key URI of a weights file")
    target = s3_cache_path(uri, cache_dir)
    stamp_path = target + ".source.json"
    try:
        storage = storage_at(parent, storage)
        remote = storage.fs.get_file_info(storage.path(name))
        if remote.type == pafs.FileType.NotFound:
            raise ModelError(f"{spec}: weights object {uri} does not exist")
        if remote.type != pafs.FileType.File:
            raise ModelError(f"{spec}: {uri} is not a file (a folder?); give the URI of the checkpoint file")
        stamp = {"uri": uri, "size": remote.size, "mtime_ns": remote.mtime_ns}
        if os.path.isfile(target) and _read_stamp(stamp_path) == stamp:
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with storage.fs.open_input_stream(storage.path(name)) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        stamp_tmp = f"{stamp_path}.tmp-{uuid.uuid4().hex}"
        with open(stamp_tmp, "w", encoding="utf-8") as f:
            json.dump(stamp, f)
        os.replace(stamp_tmp, stamp_path)
        return target
    except (OSError, StorageError) as exc:
        raise ModelError(f"{spec}: copying weights {uri} to {target} failed: {exc}") from exc


def _read_stamp(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):  # absent or half-written: copy again
        return None


def fetch_hub_file(url: str, cache_path: str, *, spec: str, remedy: str) -> str:
    """The hub file at ``cache_path`` if present, else downloaded there; ModelError with ``remedy`` if not."""
    if os.path.isfile(cache_path):
        return cache_path
    if downloads_disabled():
        raise ModelError(f"{spec}: weights are not cached at {cache_path} and downloads are disabled "
                         f"(EMBEDEVAL_OFFLINE/HF_HUB_OFFLINE). {remedy}")
    match = torch.hub.HASH_REGEX.search(os.path.basename(cache_path))
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, cache_path, hash_prefix=match.group(1) if match else None,
                                       progress=False)
    except Exception as exc:  # URLError, HTTPError, hash mismatch: all mean "no usable file"
        if os.path.exists(cache_path):
            os.remove(cache_path)
        raise ModelError(f"{spec}: the weights could not be downloaded from {url} ({exc}). {remedy}") from exc
    return cache_path


def load_state_dict_file(path: str, *, spec: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing pickled code, unwrap common wrappers, return a tensor dict.

    Accepts a plain state_dict, ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers (training
    checkpoints), ``module.``/``_orig_mod.`` key prefixes and ``.safetensors`` files.
    """
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{spec}: refused to load {path}: it contains pickled objects other than tensors, which "
            f"weights_only=True does not execute ({first}). Save only the weights: "
            "torch.save(model.state_dict(), path)") from exc
    except Exception as exc:  # corrupt files, TorchScript archives, truncated downloads
        raise ModelError(f"{spec}: cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    return _unwrap_state_dict(obj, path=path, spec=spec)


def _unwrap_state_dict(obj: Any, *, path: str, spec: str) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{spec}: {path} does not hold a state_dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{spec}: {path} is not a plain state_dict: non-tensor entries {bad[:_SHOW]}")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def key_mismatch(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of ``state_dict`` against ``module``, sorted.

    BatchNorm's ``num_batches_tracked`` counters do not count as missing: checkpoints older than the
    counter (torchvision's own ImageNet weights among them) lack them, and they play no part in inference.
    """
    expected = set(module.state_dict())
    got = set(state_dict)
    missing = sorted(k for k in expected - got if not k.endswith(_OPTIONAL_KEY_SUFFIX))
    return missing, sorted(got - expected)


def load_into_module(module: nn.Module, state_dict: dict[str, torch.Tensor], *, spec: str, path: str) -> None:
    """Strict load whose error names the first few missing/unexpected/mis-shaped keys instead of
    torch's wall of text, and says the usual cause."""
    missing, unexpected = key_mismatch(module, state_dict)
    own = module.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:_SHOW])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:_SHOW])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
        raise ModelError(f"{spec}: weights file {path} does not fit the architecture: {'; '.join(parts)}. "
                         "Check that the spec names the architecture the checkpoint was trained with.")
    # every required key was checked above; strict=False only tolerates the optional BatchNorm counters
    module.load_state_dict(state_dict, strict=False)
