"""Retention: ``embedeval runs prune`` deletes old runs and the cache entries no kept run refers to.

Which runs go: those outside the ``keep`` newest (runs ordered by :func:`embedeval.report.runs.run_time`)
and, with ``older_than_s``, only those older than that; both limits together delete a run only if it is
outside the newest ``keep`` *and* older. Never deleted: a run whose time is unknown, and a run holding a
live lease (:mod:`embedeval.io.lease`); deleting a run takes its lease first, so a run that starts during
the prune is never deleted under it.

The cache sweep: every committed partition lists the cache files it used in its marker's
``cache_files`` (:mod:`embedeval.pipeline.cache`); a cache entry file (``cache/<key>/<kind>/*.parquet``) no
kept run lists is removed, and a key's ``key.json`` with the key's last file. The sweep is skipped, and
says why, while any run holds a lease (an embed in progress reads and adds entries) or when a kept run
has a marker written before ``cache_files`` was recorded (what it uses is unknown).

Nothing is deleted unless ``apply``: the default is a dry run that prints what would be freed.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from embedeval.errors import EXIT_USAGE, EmbedevalError
from embedeval.io.commit import read_commit
from embedeval.io.embeddings import COMMIT_MARKER, CommitRecord
from embedeval.io.lease import LeaseHeld, LeaseSettings, acquire_run_lease, describe_holder, is_held, read_lease
from embedeval.io.lease_stores import LEASE_FILE
from embedeval.io.layout import CACHE_DIR, RunLayout
from embedeval.io.storage import Storage
from embedeval.report.runs import RunTime, run_ids, run_time


class RetentionError(EmbedevalError, ValueError):
    """A prune request is unusable (no limit given, a bad age); the message says what is expected."""

    exit_code = EXIT_USAGE


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``90s``, ``45m``, ``12h``, ``30d``, ``2w`` (or a plain number of seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise RetentionError(f"--older-than {text!r}: give a number and a unit, e.g. 30d, 12h, 90m, 3600s")
    return float(m.group(1)) * _AGE_UNITS[m.group(2) or "s"]


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass
class RunDecision:
    run_id: str
    time: RunTime
    size: int
    delete: bool
    reason: str


@dataclass
class CacheSweep:
    """Cache files to remove (relative paths) and what stays; ``skipped`` says why nothing is swept."""

    remove: dict[str, int] = field(default_factory=dict)   # path -> bytes
    keep_files: int = 0
    keep_bytes: int = 0
    skipped: str | None = None

    @property
    def remove_bytes(self) -> int:
        return sum(self.remove.values())


@dataclass
class PrunePlan:
    root: str
    runs: list[RunDecision]      # newest first
    cache: CacheSweep

    @property
    def deleting(self) -> list[RunDecision]:
        return [r for r in self.runs if r.delete]

    @property
    def bytes_to_free(self) -> int:
        return sum(r.size for r in self.deleting) + self.cache.remove_bytes

    def lines(self) -> list[str]:
        """What the plan does, one line per run and one for the cache (the dry run prints these)."""
        out = [f"runs under {self.root}/runs: {len(self.runs)}; deleting {len(self.deleting)}, "
               f"keeping {len(self.runs) - len(self.deleting)}"]
        width = max([len(r.run_id) for r in self.runs] + [3])
        for r in self.runs:
            out.append(f"  {'delete' if r.delete else 'keep  '}  {r.run_id.ljust(width)}  {r.time.text():<20}  "
                       f"{human_bytes(r.size):>10}  {r.reason}")
        if self.cache.skipped:
            out.append(f"cache: sweep skipped: {self.cache.skipped}")
        else:
            out.append(f"cache: {len(self.cache.remove)} files ({human_bytes(self.cache.remove_bytes)}) no kept run "
                       f"refers to; keeping {self.cache.keep_files} files ({human_bytes(self.cache.keep_bytes)})")
        return out


def _cache_refs(storage: Storage, run_id: str) -> set[str] | None:
    """The cache files a run's committed partitions list, or None if a marker predates the record."""
    refs: set[str] = set()
    for marker in storage.list_files(RunLayout(run_id).embeddings, suffix=COMMIT_MARKER):
        found = read_commit(storage, posixpath.dirname(marker))
        if found is None:
            continue
        record = CommitRecord.from_fields(found.files, found.fields)
        if record.cache_files is None:
            return None
        refs.update(record.cache_files)
    return refs


def _entry_files(sizes: dict[str, int]) -> dict[str, int]:
    """The cache entry files among ``cache/`` files: ``cache/<key>/<kind>/*.parquet``."""
    return {p: n for p, n in sizes.items() if p.endswith(".parquet") and len(p.split("/")) == 4}


def plan_cache_sweep(storage: Storage, kept: list[str], leased: list[str]) -> CacheSweep:
    """Which cache files no run in ``kept`` refers to (see the module docstring for when it is skipped)."""
    if leased:
        return CacheSweep(skipped=f"run(s) {', '.join(leased)} hold a lease (an embed in progress may read or add "
                                  "cache entries); rerun the prune when they have finished")
    referenced: set[str] = set()
    unrecorded: list[str] = []
    for run_id in kept:
        refs = _cache_refs(storage, run_id)
        if refs is None:
            unrecorded.append(run_id)
        else:
            referenced |= refs
    if unrecorded:
        return CacheSweep(skipped=f"kept run(s) {', '.join(unrecorded)} were embedded before runs recorded their "
                                  "cache files; delete or re-embed them to sweep the cache")
    sizes = storage.file_sizes(CACHE_DIR)
    entries = _entry_files(sizes)
    sweep = CacheSweep(remove={p: n for p, n in entries.items() if p not in referenced})
    keys_left = {p.split("/")[1] for p in entries if p not in sweep.remove}
    for path, size in sizes.items():
        parts = path.split("/")
        if len(parts) == 3 and parts[2] == "key.json" and parts[1] not in keys_left:
            sweep.remove[path] = size
    sweep.keep_files = len(sizes) - len(sweep.remove)
    sweep.keep_bytes = sum(sizes.values()) - sweep.remove_bytes
    return sweep


def plan_prune(storage: Storage, *, keep: int | None = None, older_than_s: float | None = None,
               sweep_cache: bool = True, now: float | None = None) -> PrunePlan:
    """Decide, reading only, which runs and cache files a prune deletes (see the module docstring)."""
    if keep is None and older_than_s is None:
        raise RetentionError("runs prune: give --keep N, --older-than AGE, or both")
    if keep is not None and keep < 0:
        raise RetentionError(f"--keep {keep}: give a number of runs, 0 or more")
    now = time.time() if now is None else now
    found = [(run_time(storage, r), r) for r in run_ids(storage)]
    # Newest first; a run whose time is unknown sorts as newest (as `runs list` shows it last).
    found.sort(key=lambda tr: (tr[0].timestamp is None, tr[0].timestamp or 0.0, tr[1]), reverse=True)
    decisions: list[RunDecision] = []
    leased: list[str] = []
    sizes = {run_id: storage.file_sizes(RunLayout(run_id).base) for _, run_id in found}
    found = [(t, run_id) for t, run_id in found if sizes[run_id]]  # an empty folder is no run (as in `runs list`)
    for rank, (t, run_id) in enumerate(found):
        size = sum(sizes[run_id].values())
        lease = read_lease(storage, run_id)
        if is_held(lease, now):
            leased.append(run_id)
            decisions.append(RunDecision(run_id, t, size, False, f"holds a lease: {describe_holder(lease, now)}"))
            continue
        if t.timestamp is None:
            decisions.append(RunDecision(run_id, t, size, False, "time unknown"))
            continue
        if keep is not None and rank < keep:
            decisions.append(RunDecision(run_id, t, size, False, f"among the {keep} newest"))
            continue
        if older_than_s is not None and t.timestamp > now - older_than_s:
            decisions.append(RunDecision(run_id, t, size, False, "newer than --older-than"))
            continue
        why = " and ".join(w for w in (f"not among the {keep} newest" if keep is not None else "",
                                       "older than --older-than" if older_than_s is not None else "") if w)
        decisions.append(RunDecision(run_id, t, size, True, why))
    kept = [d.run_id for d in decisions if not d.delete]
    cache = plan_cache_sweep(storage, kept, leased) if sweep_cache else CacheSweep(skipped="--no-cache-sweep")
    return PrunePlan(storage.root, decisions, cache)


def _remove_empty_dirs(storage: Storage, rel: str) -> None:
    """Remove empty folders under (and including) ``rel`` on a local root; a folder with anything in it stays."""
    if storage.is_s3:
        return
    top = storage.path(rel)
    for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def delete_run(storage: Storage, run_id: str, settings: LeaseSettings) -> int:
    """Delete ``runs/<run_id>/`` holding its lease (raises :class:`LeaseHeld` if another holds it); bytes freed."""
    lease = acquire_run_lease(storage, run_id, settings=settings, purpose="prune", echo=lambda _: None)
    lease_path = RunLayout(run_id).lease
    try:
        sizes = {p: n for p, n in storage.file_sizes(RunLayout(run_id).base).items() if p != lease_path}
        for path in sizes:
            storage.delete_file(path)
    finally:
        lease.release()
    _remove_empty_dirs(storage, RunLayout(run_id).base)
    return sum(sizes.values())


def apply_prune(storage: Storage, plan: PrunePlan, settings: LeaseSettings | None = None,
                echo: Callable[[str], None] = print) -> int:
    """Carry out a plan: delete its runs (each under its lease), then sweep the cache; returns bytes freed.

    A run that took a lease since the plan was made is skipped, and so is the sweep then (its references
    may be about to change).
    """
    settings = settings or LeaseSettings()
    freed = 0
    newly_leased: list[str] = []
    for decision in plan.deleting:
        try:
            size = delete_run(storage, decision.run_id, settings)
        except LeaseHeld as exc:
            newly_leased.append(decision.run_id)
            echo(f"skipped run {decision.run_id}: {exc}")
            continue
        freed += size
        echo(f"deleted run {decision.run_id} ({human_bytes(size)})")
    if plan.cache.skipped:
        echo(f"cache: sweep skipped: {plan.cache.skipped}")
    else:
        leased_now = [r for r in run_ids(storage) if is_held(read_lease(storage, r))]
        if newly_leased or leased_now:
            echo(f"cache: sweep skipped: run(s) {', '.join(sorted(set(newly_leased + leased_now)))} took a lease "
                 "during the prune")
        else:
            for path in plan.cache.remove:
                storage.delete_file(path)
            for key_dir in sorted({"/".join(p.split("/")[:2]) for p in plan.cache.remove}):
                _remove_empty_dirs(storage, key_dir)
            freed += plan.cache.remove_bytes
            echo(f"cache: removed {len(plan.cache.remove)} files ({human_bytes(plan.cache.remove_bytes)})")
    echo(f"freed {human_bytes(freed)}")
    return freed
