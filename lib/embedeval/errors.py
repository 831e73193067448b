"""The errors a user can act on. The CLI prints these as one clear line instead of a traceback."""

from __future__ import annotations

from embedeval.config import ConfigError
from embedeval.io.embeddings import EmbeddingsError
from embedeval.io.manifest import ManifestError
from embedeval.io.storage import StorageError
from embedeval.models.base import ModelError
from embedeval.pipeline.embed import EmbedError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, EmbeddingsError, ManifestError, StorageError, ModelError, EmbedError,
)
