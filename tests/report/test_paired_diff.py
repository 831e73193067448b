"""The night-over-night diff uses a paired interval where both runs kept per-unit values: a small change
that every unit shares is significant although the two runs' own intervals overlap."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from report_synthetic import write_scores

from embedeval.io.storage import Storage
from embedeval.report.build import build_report
from embedeval.report.diff import SIGNIFICANT, WITHIN_CI
from embedeval.report.paired_diff import paired_changes
from embedeval.report.settings import ReportSettings
from embedeval.scoring.bootstrap import derive_seed, resample_indices
from embedeval.scoring.per_item import PER_ITEM_SCHEMA
from embedeval.scoring.schema import ScoreRow

N = 400


def _units(model: str, items: list[str], values: np.ndarray, metric: str = "R@1", k: int | None = 1) -> pa.Table:
    n = len(items)
    return pa.table({"model": [model] * n, "task": ["retrieval"] * n, "target": ["image->text"] * n,
                     "metric": [metric] * n, "k": pa.array([k] * n, pa.int64()), "split": ["all"] * n,
                     "protocol": ["standard"] * n, "item": items, "sub": pa.array([0] * n, pa.int16()),
                     "value": values}, schema=PER_ITEM_SCHEMA)


def _row(run: str, values: np.ndarray) -> ScoreRow:
    m = float(values.mean())
    half = 1.96 * float(values.std()) / np.sqrt(values.size)
    return ScoreRow(run, "m", "retrieval", "image->text", "R@1", m, values.size, 0.1, False, k=1,
                    ci_low=m - half, ci_high=m + half)


def test_pairing_matches_a_brute_force_bootstrap_on_the_shared_units() -> None:
    rng = np.random.default_rng(3)
    old_v, new_v = rng.uniform(size=N), rng.uniform(size=N)
    items = [f"q{i:04d}" for i in range(N)]
    # the new run has 50 more units and lists them in another order; the old one lacks 20 of the new ones
    new_items = items[20:] + [f"x{i}" for i in range(50)]
    new = _units("m", new_items[::-1], np.r_[new_v[20:], rng.uniform(size=50)][::-1])
    got = paired_changes(new, _units("m", items, old_v), resamples=300)[("m", "retrieval", "image->text", "R@1", 1,
                                                                          "all", "standard")]
    a, b = new_v[20:], old_v[20:]
    key = ("m", "retrieval", "image->text", "R@1", 1, "all", "standard")
    idx = np.concatenate(list(resample_indices(a.size, 300, derive_seed(0, "night-over-night", *map(str, key)))))
    diffs = np.array([a[i].mean() - b[i].mean() for i in idx])
    assert got.shared == N - 20 and abs(got.diff - (a.mean() - b.mean())) < 1e-12
    assert abs(got.low - np.percentile(diffs, 2.5)) < 1e-12 and abs(got.high - np.percentile(diffs, 97.5)) < 1e-12


def test_a_shared_small_change_is_significant_only_when_paired(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(5)
    items = [f"q{i:04d}" for i in range(N)]
    old_v = rng.uniform(size=N)
    new_v = old_v + 0.02                       # every unit a little better: far inside both intervals
    storage = Storage(str(tmp_path / "root"))
    write_scores(storage, "a", [_row("a", old_v)], "2026-01-01T00:00:00Z")
    write_scores(storage, "b", [_row("b", new_v)], "2026-01-02T00:00:00Z")
    build_report(storage, "b", previous_run_id="a", settings=ReportSettings(dpi=50))
    assert "within CI" in storage.read_bytes("runs/b/report/diff.md").decode()   # no per-unit values: unpaired
    write_scores(storage, "a", [_row("a", old_v)], "2026-01-01T00:00:00Z", per_item=_units("m", items, old_v))
    write_scores(storage, "b", [_row("b", new_v)], "2026-01-02T00:00:00Z", per_item=_units("m", items, new_v))
    build_report(storage, "b", previous_run_id="a", settings=ReportSettings(dpi=50))
    md = storage.read_bytes("runs/b/report/diff.md").decode()
    assert "significant" in md and f"{N} shared" in md
    assert WITHIN_CI != SIGNIFICANT
