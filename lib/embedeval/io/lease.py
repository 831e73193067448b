"""The run lease: one process at a time writes ``runs/<id>/``.

A command that writes a run (``run``, ``embed``, ``score``, ``report``, ``runs prune``) first takes the
run's lease, ``runs/<id>/_LEASE.json``: who holds it (host and pid, nothing secret), when it was taken,
its last heartbeat and when it expires. While the holder lives, a background thread renews the expiry
every ``heartbeat_s``; the lease is released when the command ends, normally or with an error. A second
command on the same run id is refused with :class:`LeaseHeld` (one line naming the holder and when the
lease expires). A lease whose holder was killed is taken over once it has expired, or at once when the record names this
host and its pid is no longer running here (so a rerun right after ``kill -9`` resumes; this assumes a
host name is not shared by processes in different pid namespaces writing the same root, e.g. two
containers started with the same ``--hostname``). ``force`` takes over a live lease, for a user who knows
its holder is dead.

How exclusive the lease is depends on the root (see :mod:`embedeval.io.lease_stores`): exclusive on a
local root and on S3 servers that honour create-only PUTs; on servers that ignore them (``rclone serve
s3``) it is kept exclusive between drivers on one Ray cluster by a named Ray actor, and is otherwise
advisory, which :func:`hold_run_lease` says in a warning.

Settings: :class:`LeaseSettings` (the config's ``lease:`` section), defaulting to the environment
variables ``EMBEDEVAL_LEASE_TTL_S`` and ``EMBEDEVAL_LEASE_HEARTBEAT_S``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedeval.errors import EXIT_LEASE_HELD, EXIT_USAGE, EmbedevalError
from embedeval.io.lease_stores import (
    GUARANTEE_ADVISORY,
    GUARANTEE_RAY_CLUSTER,
    LEASE_FILE,
    ArbitratedLeaseStore,
    LeaseRecord,
    LeaseStore,
    LocalLeaseStore,
    S3LeaseStore,
    conditional_writes_honoured,
)
from embedeval.io.layout import RunLayout
from embedeval.io.storage import Storage

log = logging.getLogger(__name__)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise LeaseError(f"{name}={raw!r} is not a number of seconds") from None


class LeaseError(EmbedevalError, ValueError):
    """A lease setting is unusable; the message names it."""

    exit_code = EXIT_USAGE


class LeaseHeld(EmbedevalError, RuntimeError):
    """Another live process holds the run's lease; the message names it and when the lease expires."""

    exit_code = EXIT_LEASE_HELD


class LeaseLost(EmbedevalError, RuntimeError):
    """This process's lease was taken over (``--force`` elsewhere, or it expired while renewals failed)."""


class LeaseSettings(BaseModel):
    """How long a lease lives without a heartbeat, and how often the holder renews it."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: float = Field(default_factory=lambda: _env_seconds("EMBEDEVAL_LEASE_TTL_S", 300.0), gt=0,
                         description="a lease not renewed for this long is taken over")
    heartbeat_s: float = Field(default_factory=lambda: _env_seconds("EMBEDEVAL_LEASE_HEARTBEAT_S", 30.0), gt=0,
                               description="how often the holder renews its lease")

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> "LeaseSettings":
        if self.heartbeat_s >= self.ttl_s:
            raise ValueError(f"lease.heartbeat_s ({self.heartbeat_s}) must be below lease.ttl_s ({self.ttl_s})")
        return self


def lease_rel(run_id: str) -> str:
    return RunLayout(run_id).lease


def lease_store(storage: Storage, run_id: str) -> LeaseStore:
    """The store for a run's lease on ``storage`` (probing an S3 server once; see lease_stores)."""
    rel = lease_rel(run_id)
    if not storage.is_s3:
        return LocalLeaseStore(storage.path(rel))
    if conditional_writes_honoured(storage):
        return S3LeaseStore(storage, rel, conditional=True)
    store = S3LeaseStore(storage, rel, conditional=False)
    import ray

    return ArbitratedLeaseStore(store) if ray.is_initialized() else store


def read_lease(storage: Storage, run_id: str) -> LeaseRecord | None:
    """The run's lease record, expired or not, or None (a plain read: no probe, no Ray)."""
    rel = lease_rel(run_id)
    if not storage.exists(rel):
        return None
    try:
        return LeaseRecord.from_bytes(storage.read_bytes(rel))
    except FileNotFoundError:
        return None


def is_live(record: LeaseRecord, now: float | None = None) -> bool:
    """Whether a lease has not expired (by this machine's clock)."""
    return record.expires > (time.time() if now is None else now)


def holder_is_gone(record: LeaseRecord) -> bool:
    """Whether the record names this host and a pid that no longer runs here (a killed local holder)."""
    if record.host != socket.gethostname() or record.pid <= 0 or record.pid == os.getpid():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, under another user
        return False
    return False


def is_held(record: LeaseRecord | None, now: float | None = None) -> bool:
    """Whether a lease record stands for a live holder: not expired, and not a dead process of this host."""
    return record is not None and is_live(record, now) and not holder_is_gone(record)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_holder(record: LeaseRecord, now: float | None = None) -> str:
    """``embedeval run on host h, pid 123 (heartbeat 2s ago, expires 2026-... UTC, in 28s)``."""
    now = time.time() if now is None else now
    left = record.expires - now
    when = f"in {left:.0f}s" if left >= 0 else f"{-left:.0f}s ago"
    return (f"embedeval {record.purpose} on host {record.host}, pid {record.pid} (heartbeat "
            f"{max(0.0, now - record.heartbeat):.0f}s ago, expires {_utc(record.expires)}, {when})")


def advisory_warning(store: LeaseStore) -> str | None:
    """The warning to print when ``store`` cannot make the lease exclusive everywhere, else None."""
    if store.guarantee == GUARANTEE_ADVISORY:
        return (f"warning: the S3 server ignores create-only PUTs (If-None-Match), so the lease {store.uri} is "
                "advisory: a second run started at the same moment may also proceed")
    if store.guarantee == GUARANTEE_RAY_CLUSTER:
        return (f"warning: the S3 server ignores create-only PUTs (If-None-Match), so the lease {store.uri} is "
                "exclusive only between drivers on this Ray cluster (a named Ray actor) and advisory for others")
    return None


class RunLease:
    """A held lease. Renewed by a background thread until :meth:`release`; see the module docstring."""

    def __init__(self, store: LeaseStore, record: LeaseRecord, settings: LeaseSettings) -> None:
        self.store = store
        self.record = record
        self.settings = settings
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{record.run_id}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            now = time.time()
            renewed = LeaseRecord(**{**self.record.__dict__, "heartbeat": now, "expires": now + self.settings.ttl_s})
            try:
                if not self.store.replace(self.record.token, renewed):
                    self.lost = True
                    log.warning("the lease %s was taken over by another process; this run is no longer "
                                "protected", self.store.uri)
                    return
            except Exception as exc:  # a failed renewal is retried at the next beat; expiry is the limit
                log.warning("renewing the lease %s failed (%s); retrying in %ss", self.store.uri, exc,
                            self.settings.heartbeat_s)
                continue
            self.record = renewed

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLost` if a heartbeat found the lease taken over."""
        if self.lost:
            raise LeaseLost(f"the lease {self.store.uri} was taken over by another process; stopping "
                            f"run {self.record.run_id!r} (rerun with the same run id to resume)")

    def release(self) -> None:
        """Stop renewing and delete the record if it is still ours (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self.settings.heartbeat_s + 5)
        try:
            self.store.delete(self.record.token)
        except Exception as exc:  # the lease then expires on its own
            log.warning("releasing the lease %s failed (%s); it expires at %s", self.store.uri, exc,
                        _utc(self.record.expires))


def acquire_run_lease(storage: Storage, run_id: str, *, settings: LeaseSettings | None = None,
                      purpose: str = "run", force: bool = False,
                      echo: Callable[[str], None] = print) -> RunLease:
    """Take the lease of ``runs/<run_id>/`` on ``storage`` and start renewing it.

    Raises :class:`LeaseHeld` if another holder's lease has not expired (unless ``force``). An expired
    lease, or a live one with ``force``, is taken over (``echo`` says so). ``echo`` also gets the warning
    of a store that is not exclusive (:func:`advisory_warning`).
    """
    settings = settings or LeaseSettings()
    store = lease_store(storage, run_id)
    warning = advisory_warning(store)
    if warning:
        echo(warning)
    for _ in range(5):
        now = time.time()
        record = LeaseRecord(run_id, socket.gethostname(), os.getpid(), purpose, uuid.uuid4().hex, now, now,
                             now + settings.ttl_s)
        current = store.create(record)
        if current is None:
            return RunLease(store, record, settings)
        if not is_live(current, now):
            why = "it expired"
        elif holder_is_gone(current):
            why = f"pid {current.pid} no longer runs on this host"
        elif force:
            why = "--force"
        else:
            raise LeaseHeld(f"run {run_id!r} is held by {describe_holder(current, now)}, lease {store.uri}; "
                            "wait for it, use another run id, or pass --force if that process is dead")
        if store.replace(current.token, record):
            echo(f"took over the lease {store.uri} from {describe_holder(current, now)}: {why}")
            return RunLease(store, record, settings)
        # Someone else changed the record between our read and our replace: look again.
    raise LeaseHeld(f"run {run_id!r}: the lease {store.uri} kept changing hands; try again")


@contextmanager
def hold_run_lease(storage: Storage, run_id: str, *, settings: LeaseSettings | None = None, purpose: str = "run",
                   force: bool = False, echo: Callable[[str], None] = print) -> Iterator[RunLease]:
    """:func:`acquire_run_lease` for the length of a ``with`` block, released however the block ends."""
    lease = acquire_run_lease(storage, run_id, settings=settings, purpose=purpose, force=force, echo=echo)
    try:
        yield lease
    finally:
        lease.release()
