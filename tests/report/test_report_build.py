"""build_report end to end: files written, report.html self-contained, plots valid PNGs of sane size,
optional example inputs skipped with a note, rebuilds leave no stale plot, the same on S3."""

from __future__ import annotations

import io
import re

import pytest
from report_synthetic import current_rows, image_loader, populate, write_examples, write_scores
from PIL import Image

from embedeval.io.storage import Storage
from embedeval.report import ReportError, ReportPaths, ReportSettings, build_report
from embedeval.scoring.schema import ScoreRow

SETTINGS = ReportSettings(model_columns={"imagenet_top1": {"resnet50": 80.9, "vit_b_16": 81.1, "clip_vitb32": 68.3}},
                          dpi=80)
SCORE_PLOTS = {"corrembed_vs_k", "corrembed_vs_imagenet_top1", "rankability", "rankability_fewshot",
               "retrieval_text", "retrieval_labelled"}


def rel(storage: Storage, uri: str) -> str:
    return uri.removeprefix(storage.root + "/")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Storage, ReportPaths]:
    storage = Storage(str(tmp_path_factory.mktemp("build") / "root"))
    populate(storage)
    write_examples(storage, "r2", ["resnet50", "random_resnet50"])
    return storage, build_report(storage, "r2", settings=SETTINGS, image_loader=image_loader)


def assert_self_contained(page: str, n_plots: int) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page, re.I)     # nor in CSS
    assert "<link" not in page and "@import" not in page
    assert page.count('<img src="data:image/png;base64,') == n_plots >= 1


def assert_png(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    assert 300 <= w <= 2500 and 200 <= h <= 2500, (w, h)
    assert 5_000 < len(data) < 3_000_000


def test_writes_all_files(built: tuple[Storage, ReportPaths]) -> None:
    storage, paths = built
    files = storage.list_files("runs/r2/report")
    for uri in (paths.leaderboard, paths.html, paths.diff, *paths.plots):
        assert rel(storage, uri) in files
    names = {p.rsplit("/", 1)[-1].removesuffix(".png") for p in paths.plots}
    assert SCORE_PLOTS <= names
    assert {"prototypes_resnet50_image", "ambiguity_pair_resnet50_image",
            "ambiguity_item_random_resnet50_image"} <= names
    assert paths.previous_run_id == "r1"


def test_html_is_self_contained(built: tuple[Storage, ReportPaths]) -> None:
    storage, paths = built
    page = storage.read_bytes(rel(storage, paths.html)).decode()
    assert_self_contained(page, len(paths.plots))
    assert 'class="banner"' in page and "RANDOM WEIGHTS" in page
    for section in ('id="leaderboard"', 'id="plots"', 'id="diff"', 'id="scores"'):
        assert section in page
    assert "significant" in page and "<style>" in page


def test_every_plot_is_a_valid_png(built: tuple[Storage, ReportPaths]) -> None:
    storage, paths = built
    for uri in paths.plots:
        assert_png(storage.read_bytes(rel(storage, uri)))


def test_unloadable_images_are_noted(built: tuple[Storage, ReportPaths]) -> None:
    storage, paths = built
    assert any("could not be loaded" in n for n in paths.notes)


def test_examples_skipped_with_note_without_loader_or_files(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    write_scores(storage, "r", current_rows("r", models=["resnet50", "vit_b_16"]), None)
    paths = build_report(storage, "r", settings=ReportSettings(dpi=60))
    page = storage.read_bytes("runs/r/report/report.html").decode()
    assert "prototypes.parquet is not in this run" in page
    write_examples(storage, "r", ["resnet50"])
    paths = build_report(storage, "r", settings=ReportSettings(dpi=60))
    page = storage.read_bytes("runs/r/report/report.html").decode()
    assert "no image loader was given" in page
    assert not any("prototypes_" in p for p in paths.plots)
    assert 'class="banner"' not in page     # no random model, no banner


def test_rebuild_removes_stale_plots(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    write_scores(storage, "r", current_rows("r", models=["resnet50", "vit_b_16"]), None)
    build_report(storage, "r", settings=ReportSettings(dpi=60, model_columns=SETTINGS.model_columns))
    assert "runs/r/report/plots/corrembed_vs_imagenet_top1.png" in storage.list_files("runs/r/report")
    paths = build_report(storage, "r", settings=ReportSettings(dpi=60))
    assert "runs/r/report/plots/corrembed_vs_imagenet_top1.png" not in storage.list_files("runs/r/report")
    assert len(storage.list_files("runs/r/report/plots")) == len(paths.plots)


def test_sparse_run_builds_and_notes_what_is_missing(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    rows = [r for r in current_rows("r", models=["resnet50"]) if r.task == "corrembed"]
    write_scores(storage, "r", rows, None)
    paths = build_report(storage, "r", settings=ReportSettings(dpi=60))
    assert [p.rsplit("/", 1)[-1] for p in paths.plots] == ["corrembed_vs_k.png"]
    assert any("no rankability scores" in n for n in paths.notes)
    lb = storage.read_bytes("runs/r/report/leaderboard.md").decode()
    assert "CorrEmbed" in lb and "RANDOM" not in lb


def test_missing_scores_is_a_clear_error(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ReportError, match="embedeval score"):
        build_report(Storage(str(tmp_path / "root")), "nope")


@pytest.mark.slow
def test_report_on_s3(s3_options, tmp_path) -> None:  # noqa: ANN001
    storage = Storage(f"s3://test/report-{tmp_path.name}", s3_options)
    storage.ensure_bucket()
    populate(storage)
    write_examples(storage, "r2", ["resnet50"])
    paths = build_report(storage, "r2", settings=SETTINGS, image_loader=image_loader)
    assert paths.html.startswith("s3://test/") and paths.previous_run_id == "r1"
    files = storage.list_files("runs/r2/report")
    assert {"runs/r2/report/leaderboard.md", "runs/r2/report/diff.md", "runs/r2/report/report.html"} <= set(files)
    assert_self_contained(storage.read_bytes("runs/r2/report/report.html").decode(), len(paths.plots))
    for uri in paths.plots:
        assert_png(storage.read_bytes(rel(storage, uri)))
    assert "**▲ significant**" in storage.read_bytes("runs/r2/report/diff.md").decode()
    # a rebuild on S3 clears the old plots too
    paths2 = build_report(storage, "r2", settings=ReportSettings(dpi=60))
    assert len(storage.list_files("runs/r2/report/plots")) == len(paths2.plots)


def test_zeroshot_rows_get_their_plots_and_leaderboard_column(tmp_path) -> None:  # noqa: ANN001
    storage = Storage(str(tmp_path / "root"))
    rows = current_rows("r", models=["resnet50", "vit_b_16"])
    for i, model in enumerate(["resnet50", "vit_b_16"]):
        for metric, k in (("acc@1", 1), ("acc@5", 5), ("mean_per_class_recall", None)):
            rows.append(ScoreRow("r", model, "zeroshot", "image", metric, 0.3 + 0.1 * i, 100, 0.1, False, k=k,
                                 ci_low=0.25 + 0.1 * i, ci_high=0.35 + 0.1 * i, protocol="prompt-ensemble"))
        for protocol in ("text-bridge-hard", "text-bridge-soft", "mean-removed"):
            rows.append(ScoreRow("r", model, "zeroshot", "sketch->image", "mAP@all", 0.2 + 0.1 * i, 50, 0.1, False,
                                 split="unseen", ci_low=0.15, ci_high=0.35, protocol=protocol))
    write_scores(storage, "r", rows, None)
    paths = build_report(storage, "r", settings=ReportSettings(dpi=50))
    names = {p.rsplit("/", 1)[-1] for p in paths.plots}
    assert {"zeroshot.png", "zeroshot_bridge.png"} <= names
    board = storage.read_bytes("runs/r/report/leaderboard.md").decode()
    assert "zero-shot acc@1 (image)" in board and "bridged sketch mAP@all (unseen)" in board
