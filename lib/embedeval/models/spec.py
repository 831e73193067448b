"""The parsed form of a model spec and the small helpers every model family shares.

Kept apart from :mod:`embedeval.models.registry` so family modules can import it without importing the
registry (which imports them lazily), and so parsing never imports torch.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from typing import Iterable

from embedeval.io.storage import Storage
from embedeval.models.base import ModelError

WEIGHTS_DEFAULT = "default"
WEIGHTS_RANDOM = "random"
_WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ParsedSpec:
    """A validated spec: which family builds it, which architecture, which weights.

    ``weights`` is ``"default"`` (the family's default pretrained weights), ``"random"``, a hub tag or
    weights-enum name, a local path or an ``s3://`` URI (for ``precomputed`` the data URI), or ``"builtin"``.
    ``options`` holds ``?key=value`` suffixes that a family accepts (``precomputed:<uri>?dim=512``).
    ``kind`` is set by a family whose ``weights`` field is not a weights reference (``data``, ``builtin``).
    """

    spec: str
    family: str
    architecture: str
    weights: str
    options: dict[str, str] = field(default_factory=dict)
    kind: str | None = None

    @property
    def weights_kind(self) -> str:
        """One of ``default``, ``random``, ``file``, ``s3``, ``hub``, or the family's own ``kind``."""
        if self.kind is not None:
            return self.kind
        if self.weights in (WEIGHTS_DEFAULT, WEIGHTS_RANDOM):
            return self.weights
        if self.weights.startswith("s3://"):
            return "s3"
        if looks_like_path(self.weights):
            return "file"
        return "hub"


@dataclass(frozen=True)
class LoadOptions:
    """What :func:`embedeval.models.registry.load_model` passes to a family's loader."""

    device: str                    # a resolved torch device string: "cpu" or "cuda"
    storage: Storage | None = None  # reaches s3:// weights or data with its S3 settings (None: the AWS defaults)
    cache_dir: str | None = None   # where s3:// weights are copied; None -> ~/.cache/embedeval/weights
    dim_hint: int | None = None    # the dimension the caller expects (precomputed rows are checked against it)


def looks_like_path(text: str) -> bool:
    """Whether a weights field names a file rather than a tag: paths and URIs always contain a separator
    or end in a checkpoint suffix, tags never do."""
    return (
        text.startswith(("s3://", "file://", "/", "./", "../", "~"))
        or "/" in text
        or "\\" in text
        or text.lower().endswith(_WEIGHT_FILE_SUFFIXES)
    )


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """`` (did you mean 'a', 'b'?)`` for close matches, case-insensitive, or an empty string."""
    choices = list(choices)
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(by_lower[c]) for c in close) + "?)"


def short_list(items: Iterable[str], limit: int = 12) -> str:
    """A comma list that stays readable in an error message however long the registry gets."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def random_seed_for(parsed: ParsedSpec) -> int:
    """A seed derived from the spec, so every Ray actor that loads ``...:random`` builds the SAME model;
    independent random replicas would make embeddings from different actors incomparable."""
    digest = hashlib.sha256(f"{parsed.family}:{parsed.architecture}".encode()).hexdigest()
    return int(digest[:8], 16)


def resolve_device(device: str) -> str:
    """``"auto"`` picks cuda when present; asking for cuda without one is an error, not a silent CPU run.

    ``"cpu"`` is answered without importing torch: a process that embeds with a torch-free family (the
    built-in pixel statistics, precomputed vectors) then never pays torch's import (2 CPU-seconds)."""
    if device == "cpu":
        return device
    if not (device == "auto" or device.startswith("cuda")):
        raise ModelError(f"unknown device {device!r}: expected 'cpu', 'cuda', 'cuda:<n>' or 'auto'")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but torch sees no CUDA device; "
                         "use device='auto' or device='cpu'")
    return device
