"""Where a run's lease record lives, and what makes creating it exclusive.

A store holds one small JSON record (``runs/<id>/_LEASE.json``) and offers four operations; the lease
logic in :mod:`embedeval.io.lease` is written against them only:

- ``create(record)``: write the record if there is none; return None on success, else the record there;
- ``read()``: the record there, or None;
- ``replace(expected_token, record)``: overwrite only if the record there has ``expected_token``;
- ``delete(expected_token)``: remove only if the record there has ``expected_token``.

How exclusive each store is (its :attr:`guarantee`):

- :class:`LocalLeaseStore` (a local root): ``exclusive``. ``create`` is an exclusive create (a hard link
  of a complete temporary file, which fails if the name exists), and every read-check-write runs under an
  ``flock`` of the run folder, so two processes on one machine can never both hold the lease.
- :class:`S3LeaseStore` with ``conditional=True`` (AWS S3, current MinIO): ``exclusive``. ``create`` is a
  create-only PUT (``If-None-Match: *``); ``replace`` is a PUT with ``If-Match: <etag read>``.
- :class:`S3LeaseStore` with ``conditional=False`` (servers that accept those headers and ignore them, as
  ``rclone serve s3`` does): ``advisory``. It reads, checks and writes, then reads back; two runs that
  start at the same moment can both proceed.
- :class:`ArbitratedLeaseStore` around an advisory store, when Ray is initialised: ``ray-cluster``. A
  named detached Ray actor (unique per namespace on one cluster, its methods run one at a time) decides
  first, so two drivers on the same Ray cluster never both hold the lease; drivers on different clusters
  (or each with an in-process Ray) are still only kept apart by the advisory record.

:func:`conditional_writes_honoured` probes an S3 server once per (endpoint, bucket) and process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from embedeval.io.storage import Storage, StorageError

log = logging.getLogger(__name__)

LEASE_FILE = "_LEASE.json"

GUARANTEE_EXCLUSIVE = "exclusive"
GUARANTEE_RAY_CLUSTER = "ray-cluster"
GUARANTEE_ADVISORY = "advisory"


@dataclass
class LeaseRecord:
    """One lease as stored: who holds it (host, pid; nothing secret), since when, and until when.

    Times are epoch seconds on the holder's clock; a contender compares ``expires`` with its own clock,
    so hosts sharing a root need clocks within a small fraction of the lease's ttl.
    """

    run_id: str
    host: str
    pid: int
    purpose: str             # the command holding it: "run", "embed", "prune"...
    token: str               # random, tells this holder from a later one on the same host and pid
    started: float
    heartbeat: float
    expires: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "holder": {"host": self.host, "pid": self.pid}, "purpose": self.purpose,
                "token": self.token, "started": self.started, "heartbeat": self.heartbeat, "expires": self.expires}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LeaseRecord":
        """Parse a stored record; an unreadable one becomes an already-expired record with an empty token."""
        try:
            holder = d["holder"]
            return cls(str(d["run_id"]), str(holder["host"]), int(holder["pid"]), str(d.get("purpose", "?")),
                       str(d["token"]), float(d["started"]), float(d["heartbeat"]), float(d["expires"]))
        except (KeyError, TypeError, ValueError):
            return cls(str(d.get("run_id", "?")) if isinstance(d, dict) else "?", "unknown", 0, "?", "",
                       0.0, 0.0, 0.0)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseRecord":
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            parsed = {}
        return cls.from_dict(parsed if isinstance(parsed, dict) else {})

    def to_bytes(self) -> bytes:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True).encode("utf-8")


class LeaseStore(Protocol):
    """See the module docstring for the contract of each operation."""

    guarantee: str
    uri: str

    def create(self, record: LeaseRecord) -> LeaseRecord | None: ...

    def read(self) -> LeaseRecord | None: ...

    def replace(self, expected_token: str, record: LeaseRecord) -> bool: ...

    def delete(self, expected_token: str) -> bool: ...


class LocalLeaseStore:
    """A lease file on a local disk: exclusive create, read-check-write under an flock of the run folder."""

    guarantee = GUARANTEE_EXCLUSIVE

    def __init__(self, path: str) -> None:
        self.path = path
        self.uri = path
        self.folder = os.path.dirname(path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def _write_temp(self, record: LeaseRecord) -> str:
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(record.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def read(self) -> LeaseRecord | None:
        try:
            with open(self.path, "rb") as f:
                return LeaseRecord.from_bytes(f.read())
        except FileNotFoundError:
            return None

    def create(self, record: LeaseRecord) -> LeaseRecord | None:
        for _ in range(10):
            try:
                with self._locked():
                    tmp = self._write_temp(record)
                    try:
                        os.link(tmp, self.path)  # fails if the name exists: an exclusive create of a complete file
                        return None
                    except FileExistsError:
                        return self.read() or record  # cannot vanish while we hold the lock
                    finally:
                        os.unlink(tmp)
            except FileNotFoundError:
                continue  # a release removed the (empty) run folder while we waited for its lock: make it again
        raise OSError(f"could not create the lease {self.path}: its folder keeps disappearing")

    def replace(self, expected_token: str, record: LeaseRecord) -> bool:
        with self._locked():
            current = self.read()
            if current is None or current.token != expected_token:
                return False
            os.replace(self._write_temp(record), self.path)
            return True

    def delete(self, expected_token: str) -> bool:
        with self._locked():
            current = self.read()
            if current is None or current.token != expected_token:
                return False
            os.unlink(self.path)
            try:
                os.rmdir(self.folder)  # a run folder only the lease made (a refused or failed command) goes too
            except OSError:
                pass  # it holds the run's files
            return True


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


_PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3LeaseStore:
    """A lease object on S3 through boto3; exclusive when the server honours conditional PUTs."""

    def __init__(self, storage: Storage, rel: str, conditional: bool) -> None:
        self.client = storage.boto3_client()
        self.bucket, _, self.key = storage.path(rel).partition("/")
        self.uri = storage.uri(rel)
        self.conditional = conditional
        self.guarantee = GUARANTEE_EXCLUSIVE if conditional else GUARANTEE_ADVISORY

    def _read(self) -> tuple[LeaseRecord | None, str]:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # botocore errors do not derive from OSError
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None, ""
            raise StorageError(f"reading the lease {self.uri} failed: {exc}") from exc
        return LeaseRecord.from_bytes(answer["Body"].read()), str(answer.get("ETag", ""))

    def _put(self, record: LeaseRecord, **conditions: str) -> bool:
        """PUT the record; False when a condition failed (only sent when the server honours them)."""
        if not self.conditional:
            conditions = {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record.to_bytes(),
                                   ContentType="application/json", **conditions)
            return True
        except Exception as exc:
            if conditions and _error_code(exc) in _PRECONDITION_CODES:
                return False
            raise StorageError(f"writing the lease {self.uri} failed: {exc}") from exc

    def read(self) -> LeaseRecord | None:
        return self._read()[0]

    def create(self, record: LeaseRecord) -> LeaseRecord | None:
        if self.conditional:
            if self._put(record, IfNoneMatch="*"):
                return None
            return self.read() or record
        current = self.read()
        if current is not None:
            return current
        self._put(record)
        # Read back: a contender whose PUT landed after ours wins and we step back. Narrows the race of
        # an unconditional store, does not close it (see the module docstring).
        back = self.read()
        return None if back is not None and back.token == record.token else (back or record)

    def replace(self, expected_token: str, record: LeaseRecord) -> bool:
        current, etag = self._read()
        if current is None or current.token != expected_token:
            return False
        return self._put(record, IfMatch=etag)

    def delete(self, expected_token: str) -> bool:
        current = self.read()
        if current is None or current.token != expected_token:
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            raise StorageError(f"deleting the lease {self.uri} failed: {exc}") from exc
        return True


_probed: dict[tuple[str, str], bool] = {}


def conditional_writes_honoured(storage: Storage) -> bool:
    """Whether the S3 server of ``storage`` honours ``If-None-Match: *`` and ``If-Match`` on PUT.

    Probed once per (endpoint, bucket) and process with a throwaway object under the root: a second
    create-only PUT of the key must fail, and so must a PUT with an ETag that does not match. Servers
    that accept and ignore the headers (``rclone serve s3``) fail the probe.
    """
    bucket, _, prefix = storage.path("").partition("/")
    where = (storage.s3_endpoint() or "aws", bucket)
    if where in _probed:
        return _probed[where]
    client = storage.boto3_client()
    key = posixpath.join(prefix, f"_lease_probe/{uuid.uuid4().hex}.json")

    def refused(**conditions: str) -> bool:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"{}", **conditions)
            return False
        except Exception as exc:
            if _error_code(exc) in _PRECONDITION_CODES:
                return True
            raise StorageError(f"probing conditional writes at s3://{bucket}/{key} failed: {exc}") from exc

    try:
        if refused(IfNoneMatch="*"):
            raise StorageError(f"probing conditional writes: a create-only PUT of the new key s3://{bucket}/{key} "
                               "was refused")
        honoured = refused(IfNoneMatch="*") and refused(IfMatch='"00000000000000000000000000000000"')
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:  # a leftover probe object is harmless
            log.debug("could not delete the lease probe s3://%s/%s: %s", bucket, key, exc)
    _probed[where] = honoured
    return honoured


ARBITER_NAME = "embedeval-lease-arbiter"
ARBITER_NAMESPACE = "embedeval"


class _Arbiter:
    """The Ray actor behind :class:`ArbitratedLeaseStore`: lease records by key, one method at a time."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def claim(self, key: str, record: dict[str, Any]) -> dict[str, Any] | None:
        current = self.records.get(key)
        if current is not None and current["token"] != record["token"]:
            return current
        self.records[key] = record
        return None

    def replace(self, key: str, expected_token: str, record: dict[str, Any]) -> bool:
        current = self.records.get(key)
        if current is not None and current["token"] != expected_token:
            return False
        self.records[key] = record
        return True

    def release(self, key: str, token: str) -> None:
        current = self.records.get(key)
        if current is not None and current["token"] == token:
            del self.records[key]


def lease_arbiter() -> Any:
    """The cluster's lease arbiter actor (created by the first caller; Ray makes the name unique)."""
    import ray

    actor_class = ray.remote(num_cpus=0, max_restarts=0)(_Arbiter)
    return actor_class.options(name=ARBITER_NAME, namespace=ARBITER_NAMESPACE, lifetime="detached",
                               get_if_exists=True).remote()


class ArbitratedLeaseStore:
    """An advisory store whose creates and replaces a named Ray actor decides first (see the module docstring)."""

    guarantee = GUARANTEE_RAY_CLUSTER

    def __init__(self, inner: S3LeaseStore, arbiter: Any | None = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.arbiter = arbiter if arbiter is not None else lease_arbiter()

    def _ask(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(getattr(self.arbiter, method).remote(self.uri, *args))

    def read(self) -> LeaseRecord | None:
        return self.inner.read()

    def create(self, record: LeaseRecord) -> LeaseRecord | None:
        held = self._ask("claim", record.as_dict())
        if held is not None:
            return LeaseRecord.from_dict(held)
        current = self.inner.create(record)
        if current is not None:
            self._ask("release", record.token)
        return current

    def replace(self, expected_token: str, record: LeaseRecord) -> bool:
        if not self._ask("replace", expected_token, record.as_dict()):
            return False
        if self.inner.replace(expected_token, record):
            return True
        self._ask("release", record.token)
        return False

    def delete(self, expected_token: str) -> bool:
        deleted = self.inner.delete(expected_token)
        self._ask("release", expected_token)
        return deleted
