"""One interface to a root that is either a local folder or ``s3://bucket/prefix``.

Every stage reads and writes through :class:`Storage`, so the same code runs against a laptop folder,
a MinIO/rclone test server and real S3. It is also the one handle that carries the S3 settings: code that
reaches a URI outside the root (a manifest, an image, a weights file) asks the handle it was given
(:meth:`Storage.at`, :meth:`Storage.locate`) instead of taking :class:`S3Options` itself. pyarrow's
S3FileSystem does the work; it ignores ``AWS_ENDPOINT_URL``, so the endpoint is always passed explicitly
from :class:`S3Options`.

Secrets: credentials come from :class:`S3Options` (config) or the standard AWS environment variables /
instance role. They are held as ``SecretStr`` and never appear in ``repr``, logs or written configs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, SecretStr

from embedeval.errors import EmbedevalError

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3-compatible servers other than AWS (rclone's in particular) reject the newer default request
# checksums of the AWS SDKs (rclone answers a checksummed PutObject with 411 MissingContentLength and a
# checksummed CompleteMultipartUpload with MalformedXML). "when_required" is the older behaviour and is
# harmless on real S3. A value the user set in the environment wins.
_CHECKSUM_SETTINGS = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


_ENV_LOCK = threading.Lock()


class StorageError(EmbedevalError, RuntimeError):
    """A read or write against the root failed after retries; the message names the URI."""


# How pyarrow (the AWS SDK) words errors that a later attempt may not meet: throttling, 5xx answers,
# dropped connections and timeouts. Anything else (access denied, no such bucket, a bad request) is final.
_TRANSIENT_MARKERS = ("SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "THROTTLING", "REQUEST_TIMEOUT",
                      "NETWORK_CONNECTION", "curlCode", "HTTP status 500", "HTTP status 502", "HTTP status 503",
                      "HTTP status 504", "Connection reset", "timed out")


# Whole-object reads (a Parquet file, a JSON marker) tried this many times on a transient error, on top of
# the SDK's own retries of each request (see Storage._read_call).
BODY_READ_ATTEMPTS = 3


def retry_transient(call: Callable[[], T], attempts: int, pause_s: float,
                    transient: Callable[[BaseException], bool]) -> T:
    """``call()``, tried up to ``attempts`` times while it raises an exception ``transient`` accepts, with
    a pause of ``pause_s`` doubling after each try; the last such exception, or any other, propagates."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt >= attempts or not transient(exc):
                raise
            log.info("retrying after a transient error (attempt %d of %d): %s", attempt, attempts, exc)
            time.sleep(pause_s * 2 ** (attempt - 1))
    raise ValueError(f"retry_transient: attempts must be at least 1, got {attempts}")


def is_transient_error(exc: BaseException) -> bool:
    """Whether an S3 error is worth retrying later (it was transient at the server or on the network)."""
    if isinstance(exc, FileNotFoundError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return any(marker in text for marker in _TRANSIENT_MARKERS)


class S3Options(BaseModel):
    """How to reach S3-compatible storage. Unset fields fall back to the AWS environment/instance role."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    max_attempts: int = 8
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("EMBEDEVAL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")

    def resolved_region(self) -> str:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    def boto3_client(self) -> Any:
        """A boto3 S3 client with the same endpoint, region and credentials (for code outside pyarrow)."""
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "region_name": self.resolved_region(),
            "config": Config(
                retries={"max_attempts": self.max_attempts, "mode": "standard"},
                connect_timeout=self.connect_timeout_s,
                read_timeout=self.request_timeout_s,
                s3={"addressing_style": "path"},
                request_checksum_calculation=_checksum_setting("AWS_REQUEST_CHECKSUM_CALCULATION"),
                response_checksum_validation=_checksum_setting("AWS_RESPONSE_CHECKSUM_VALIDATION"),
            ),
        }
        if self.resolved_endpoint():
            kwargs["endpoint_url"] = self.resolved_endpoint()
        if self.access_key_id and self.secret_access_key:
            kwargs["aws_access_key_id"] = self.access_key_id.get_secret_value()
            kwargs["aws_secret_access_key"] = self.secret_access_key.get_secret_value()
            if self.session_token:
                kwargs["aws_session_token"] = self.session_token.get_secret_value()
        return boto3.client("s3", **kwargs)


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def make_filesystem(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path of ``uri`` inside it.

    Local paths are made absolute; ``s3://bucket/key`` becomes ``bucket/key`` on an S3FileSystem.
    """
    if is_s3_uri(uri):
        return _s3_filesystem(s3 or S3Options()), uri[len("s3://"):].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _checksum_setting(name: str) -> str:
    """The value of one AWS checksum setting: the environment's if set, else ``when_required``."""
    return os.environ.get(name) or _CHECKSUM_SETTINGS[name]


@contextmanager
def _checksum_env() -> Iterator[None]:
    """The AWS checksum settings in the process environment while an S3FileSystem is made, restored after.

    pyarrow's S3FileSystem offers no option for them: the AWS C++ SDK inside it reads
    ``AWS_REQUEST_CHECKSUM_CALCULATION`` / ``AWS_RESPONSE_CHECKSUM_VALIDATION`` from the environment when
    its client is made (a filesystem made without them keeps checksumming). So they are set for that
    moment only (one thread at a time), and the environment is as it was afterwards: neither importing
    this module nor making a filesystem changes the process environment. A value the user set is kept.
    boto3 clients get the same settings through their ``Config`` instead.
    """
    with _ENV_LOCK:
        saved = {name: os.environ.get(name) for name in _CHECKSUM_SETTINGS}
        for name in _CHECKSUM_SETTINGS:
            os.environ[name] = _checksum_setting(name)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _s3_filesystem(s3: S3Options) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        "region": s3.resolved_region(),
        "connect_timeout": s3.connect_timeout_s,
        "request_timeout": s3.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3.max_attempts),
        # Directory-marker objects confuse some servers (rclone rejects them) and mean nothing on S3.
        "background_writes": False,
        # Small files go up in one PutObject on close instead of Create/UploadPart/CompleteMultipartUpload:
        # a third of the requests, and a PUT can be retried safely where a retried Complete whose first
        # answer was lost fails with NoSuchUpload on some servers (rclone's).
        "allow_delayed_open": True,
    }
    endpoint = s3.resolved_endpoint()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        if not host:
            scheme, host = "https", endpoint
        kwargs["endpoint_override"] = host
        kwargs["scheme"] = scheme
        kwargs["force_virtual_addressing"] = False
    if s3.access_key_id and s3.secret_access_key:
        kwargs["access_key"] = s3.access_key_id.get_secret_value()
        kwargs["secret_key"] = s3.secret_access_key.get_secret_value()
        if s3.session_token:
            kwargs["session_token"] = s3.session_token.get_secret_value()
    with _checksum_env():
        return pafs.S3FileSystem(**kwargs)


def storage_at(uri: str, via: "Storage | None" = None) -> "Storage":
    """A handle rooted at ``uri`` with the S3 settings of ``via`` (None: the AWS environment's)."""
    return Storage(uri) if via is None else via.at(uri)


def locate(uri: str, via: "Storage | None" = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of ``uri``, reached with the S3 settings of ``via`` (None: the environment's)."""
    return make_filesystem(uri, None if via is None else via.s3)


@dataclass
class Storage:
    """A root folder (local or s3://) and the filesystem that reaches it.

    Paths passed to methods are relative to the root and use ``/``. Writes of small files (JSON, single
    Parquet files) are atomic on local disk (temp file + rename) and atomic by nature on S3 (one PUT).
    """

    root: str
    s3: S3Options | None = None

    def __post_init__(self) -> None:
        self.fs, self._base = make_filesystem(self.root, self.s3)
        self.is_s3 = is_s3_uri(self.root)
        if self.is_s3:
            self.root = "s3://" + self._base
        else:
            self.root = self._base

    def __getstate__(self) -> dict[str, Any]:
        # pyarrow filesystems pickle, but rebuilding keeps workers independent of the driver's client.
        return {"root": self.root, "s3": self.s3}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root = state["root"]
        self.s3 = state["s3"]
        self.__post_init__()

    # --- paths -------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root (what pyarrow calls take)."""
        return posixpath.join(self._base, *[p.strip("/") for p in parts if p])

    def uri(self, *parts: str) -> str:
        """The user-facing URI of ``parts`` under the root (s3://... or an absolute local path)."""
        p = self.path(*parts)
        return "s3://" + p if self.is_s3 else p

    def child(self, *parts: str) -> "Storage":
        return Storage(self.uri(*parts), self.s3)

    def at(self, uri: str) -> "Storage":
        """A handle rooted at any other URI (local or s3://), reached with this handle's S3 settings."""
        return Storage(uri, self.s3)

    def locate(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The filesystem and path of any URI (a manifest, an image, a weights file) with these S3 settings."""
        return make_filesystem(uri, self.s3)

    # --- queries -----------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        info = self._call(self.fs.get_file_info, self.path(rel))
        return info.type != pafs.FileType.NotFound

    def list_files(self, rel: str = "", suffix: str = "") -> list[str]:
        """Relative paths (to the root) of files under ``rel``, recursively, sorted; [] if it is absent."""
        return sorted(f for f in self.file_sizes(rel) if f.endswith(suffix))

    def file_sizes(self, rel: str = "") -> dict[str, int]:
        """Relative path (to the root) -> size in bytes of each file under ``rel``, recursively; {} if absent."""
        selector = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        infos = self._call(self.fs.get_file_info, selector)
        return {posixpath.relpath(i.path, self._base): int(i.size or 0) for i in infos
                if i.type == pafs.FileType.File}

    def list_dirs(self, rel: str = "") -> list[str]:
        """Names of the immediate sub-folders of ``rel``."""
        selector = pafs.FileSelector(self.path(rel), recursive=False, allow_not_found=True)
        infos = self._call(self.fs.get_file_info, selector)
        return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)

    # --- reads -------------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        # The GET happens in read(), so the whole read goes through _call to name the URI on failure.
        return self._read_call(self._get_object, self.path(rel))

    def _get_object(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel).decode("utf-8"))

    def read_parquet(self, rels: list[str], columns: list[str] | None = None) -> pa.Table:
        tables = [self._read_call(pq.read_table, self.path(r), columns=columns, filesystem=self.fs) for r in rels]
        return pa.concat_tables(tables) if tables else pa.table({})

    # --- writes ------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one file atomically: temp file + rename on local disk, one PUT on S3."""
        target = self.path(rel)
        if self.is_s3:
            # The upload happens on close, so the whole write goes through _call to name the URI on failure.
            self._call(self._put_object, target, data)
            return
        os.makedirs(posixpath.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def _put_object(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def write_parquet(self, rel: str, table: pa.Table, metadata: dict[str, str] | None = None) -> str:
        """Write one Parquet file atomically (buffered in memory: callers keep files to a few hundred MB).

        Returns the sha256 of the bytes written (what a commit marker lists, see :mod:`embedeval.io.commit`).
        """
        if metadata:
            merged = dict(table.schema.metadata or {})
            merged.update({k.encode(): v.encode() for k, v in metadata.items()})
            table = table.replace_schema_metadata(merged)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.write_bytes(rel, data)
        return hashlib.sha256(data).hexdigest()

    def delete_dir(self, rel: str) -> None:
        """Remove everything under ``rel`` (no error if it is absent)."""
        files = self.list_files(rel)
        if self.is_s3:
            self._delete_s3_keys([self.path(f) for f in files])
            return
        for f in files:
            self._call(self.fs.delete_file, self.path(f))
        if not self.is_s3 and os.path.isdir(self.path(rel)):
            import shutil

            shutil.rmtree(self.path(rel), ignore_errors=True)

    def delete_file(self, rel: str) -> None:
        if not self.exists(rel):
            return
        if self.is_s3:
            self._delete_s3_keys([self.path(rel)])
        else:
            self._call(self.fs.delete_file, self.path(rel))

    def boto3_client(self) -> Any:
        """A boto3 S3 client with this handle's S3 settings (for requests pyarrow cannot make)."""
        return (self.s3 or S3Options()).boto3_client()

    def s3_endpoint(self) -> str | None:
        """The S3 endpoint this handle talks to (None: AWS's default)."""
        return (self.s3 or S3Options()).resolved_endpoint()

    def _delete_s3_keys(self, paths: list[str]) -> None:
        # pyarrow re-creates a "directory marker" object after deleting a key, which some S3-compatible
        # servers reject; boto3's DeleteObjects removes exactly the keys asked for.
        client = self.boto3_client()
        by_bucket: dict[str, list[str]] = {}
        for p in paths:
            bucket, _, key = p.partition("/")
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                chunk = [{"Key": k} for k in keys[start:start + 1000]]
                try:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
                except Exception as exc:  # botocore errors do not derive from OSError
                    raise StorageError(f"deleting {len(chunk)} objects under s3://{bucket} failed: {exc}") from exc

    def ensure_bucket(self) -> None:
        """Create the bucket of an s3:// root if it does not exist (tests and first runs)."""
        if not self.is_s3:
            os.makedirs(self._base, exist_ok=True)
            return
        bucket = self._base.split("/", 1)[0]
        info = self._call(self.fs.get_file_info, bucket)
        if info.type == pafs.FileType.NotFound:
            self._call(self.fs.create_dir, bucket)

    def _read_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`_call` for a whole-object read, tried again on a transient S3 error (up to
        :data:`BODY_READ_ATTEMPTS` times, short backoff). The SDK retries a request whose answer fails, but
        not a body cut off after the headers ("Failed to flush response stream"), and a read is safe to repeat."""
        return retry_transient(lambda: self._call(fn, *args, **kwargs), BODY_READ_ATTEMPTS, 0.2,
                               lambda exc: self.is_s3 and is_transient_error(exc))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except OSError as exc:
            where = args[0] if args else "?"
            if not isinstance(where, str):
                where = getattr(where, "base_dir", str(where))
            shown = ("s3://" + where) if self.is_s3 else where
            raise StorageError(f"storage operation {str(getattr(fn, '__name__', fn)).lstrip('_')} failed on {shown}: "
                               f"{exc}") from exc
