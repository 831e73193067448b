"""S3 faults: a flaky store costs retries, not results; a lasting outage fails clearly and commits nothing partial.

The S3 traffic of the job (manifest, images, output root; the driver and every Ray worker) goes through
the fault proxy of ``s3_fault_proxy.py``, which answers 503 SlowDown / 500 InternalError, resets
connections before or in the middle of an answer, or answers late.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedeval.config import parse_config
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.embeddings import (
    COMMIT_MARKER,
    CommitRecord,
    PartFile,
    embeddings_table,
    list_committed,
    read_commit_marker,
    read_committed,
    table_checksum,
    write_commit_marker,
)
from embedeval.io.storage import S3Options, Storage, StorageError
from embedeval.pipeline.embed import embed_run
from embedeval.pipeline.media import BadItem, MediaReader
from s3_fault_proxy import FAULT_KINDS, S3FaultProxy

pytestmark = pytest.mark.slow

READS = ("GET", "HEAD")


def _config(root: str, manifest: str, models: list, s3: S3Options | None = None, **embed):  # noqa: ANN003, ANN202
    settings = {"batch_size": 8, "rows_per_file": 16, "max_image_pixels": 4_000_000, **embed}
    data = {"root": root, "run_id": "r1", "manifest": manifest, "models": models, "embed": settings}
    if s3 is not None:
        data["s3"] = s3.model_dump()
    return parse_config(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return write_demo_corpus(tmp_path_factory.mktemp("demo"), n_items=24)


def _upload_corpus(corpus, target: Storage) -> str:  # noqa: ANN001
    """Copy the demo catalogue (manifest + media) to ``target``; return the manifest's URI."""
    for path in sorted(Path(corpus.root).rglob("*")):
        if path.is_file() and path.suffix in (".png", ".parquet"):
            target.write_bytes(str(path.relative_to(corpus.root)), path.read_bytes())
    return target.uri("manifest.parquet")


def _proxied(proxy: S3FaultProxy, s3_server, **options) -> S3Options:  # noqa: ANN001, ANN003
    """Options that reach the S3 server through the proxy (S3Options' defaults unless ``options`` say)."""
    return S3Options(endpoint_url=proxy.endpoint_url, access_key_id=s3_server.access_key,
                     secret_access_key=s3_server.secret_key, **options)


def _assert_markers_complete(storage: Storage, run_id: str) -> list[tuple[str, str]]:
    """Every commit marker of the run lists files that exist with the rows it says; returns what is committed."""
    committed = list_committed(storage, run_id)
    for model, modality in committed:
        record = read_commit_marker(storage, run_id, model, modality)
        assert record is not None
        for f in record.files:
            assert storage.exists(f.path), f"{model}/{modality}: marker lists missing {f.path}"
            assert storage.read_parquet([f.path], columns=["id"]).num_rows == f.rows, f.path
        assert sum(f.rows for f in record.files) == record.rows
        for errors_file in record.errors_files:
            assert storage.exists(errors_file), errors_file
        assert len(read_committed(storage, run_id, model, modality)) == record.rows
    return committed


@pytest.mark.usefixtures("ray_local")
def test_flaky_s3_costs_retries_not_results(corpus, tmp_path: Path, s3_options, s3_server,  # noqa: ANN001
                                            fault_proxy: S3FaultProxy) -> None:
    prefix = "s3://test/faults-flaky"
    manifest = _upload_corpus(corpus, Storage(f"{prefix}/catalogue", s3_options))   # straight to the server
    clean = _config(str(tmp_path / "clean"), str(corpus.manifest), ["builtin:pixelstats"])
    started = time.monotonic()
    embed_run(clean, echo=lambda _: None)
    print(f"clean local run: {time.monotonic() - started:.1f}s")

    # A few percent of all requests; more of the PUTs, which are few (a dozen or so) among the reads.
    fault_proxy.flaky(rate=0.05, rate_by_method={"PUT": 0.3})
    flaky_s3 = _proxied(fault_proxy, s3_server)          # S3Options' default retry budget
    started = time.monotonic()
    summary = embed_run(_config(f"{prefix}/out", manifest, ["builtin:pixelstats"], flaky_s3), echo=lambda _: None)
    seconds = time.monotonic() - started
    stats = fault_proxy.stats
    print(f"flaky embed run: {seconds:.1f}s, proxy: {stats}")

    # Faults really happened, on reads (manifest, images, markers) and on writes (parts, markers).
    assert stats.injected >= 5, stats
    assert len(stats.faults) >= 3, stats
    assert sum(stats.faults_by_method[m] for m in READS) >= 1 and stats.faults_by_method["PUT"] >= 1, stats
    # ... and cost nothing: no good image quarantined, the same rows and vectors as a clean local run.
    assert summary.partitions and all(p.quarantined == 0 and p.embedded == p.inputs for p in summary.partitions)
    out = Storage(f"{prefix}/out", flaky_s3)          # read back through the still-flaky proxy
    expected = list_committed(Storage(clean.root), "r1")
    assert _assert_markers_complete(out, "r1") == expected == [("builtin-pixelstats", "image"),
                                                              ("builtin-pixelstats", "sketch")]
    for model, modality in expected:
        ref = read_committed(Storage(clean.root), "r1", model, modality)
        got = read_committed(out, "r1", model, modality)
        assert list(zip(got.ids, got.subs)) == list(zip(ref.ids, ref.subs))
        np.testing.assert_array_equal(got.vectors, ref.vectors)
    assert out.list_files("runs/r1/errors/model=builtin-pixelstats") == []


@pytest.mark.usefixtures("ray_local")
def test_lasting_outage_fails_clearly_and_commits_nothing_partial(corpus, s3_options, s3_server,  # noqa: ANN001
                                                                   fault_proxy: S3FaultProxy) -> None:
    prefix = "s3://test/faults-outage"
    manifest = _upload_corpus(corpus, Storage(f"{prefix}/catalogue", s3_options))
    outage_s3 = _proxied(fault_proxy, s3_server, max_attempts=2)
    models = [{"spec": "builtin:pixelstats", "name": "first"}, {"spec": "builtin:pixelstats", "name": "second"}]
    # No embedding cache, so the second model goes through the Ray pipeline (its writes fail in a Ray task).
    config = _config(f"{prefix}/out", manifest, models, outage_s3, rows_per_file=8, use_cache=False,
                     modalities=["image", "sketch"])
    # The outage begins with the second model's first file: the first model is committed by then.
    fault_proxy.outage_when(lambda method, path: method == "PUT" and "/model=second/" in path)

    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        embed_run(config, echo=lambda _: None)
    failed_at = time.monotonic()
    stats = fault_proxy.stats
    message = str(info.value)
    assert fault_proxy.mode == "outage" and fault_proxy.outage_since is not None, stats
    print(f"outage run: {failed_at - started:.1f}s in all, failed {failed_at - fault_proxy.outage_since:.1f}s "
          f"after the outage began, with {type(info.value).__name__}: {message}\nproxy: {stats}")

    assert failed_at - fault_proxy.outage_since < 120           # bounded retries, then a clear failure
    assert stats.faults["slowdown"] >= 2 and stats.faults["slowdown"] < 500, stats
    assert f"{prefix}/out/runs/r1/embeddings/model=second/" in message   # names the S3 URI that failed
    assert "SLOW_DOWN" in message or "503" in message           # and why
    assert s3_server.secret_key not in message

    fault_proxy.clean()
    out = Storage(f"{prefix}/out", s3_options)
    assert _assert_markers_complete(out, "r1") == [("first", "image"), ("first", "sketch")]

    # Once the store is back, the same run resumes: the first model is kept, the second is built.
    summary = embed_run(config, echo=lambda _: None)
    assert [(p.model, p.skipped) for p in summary.partitions] == [
        ("first", True), ("first", True), ("second", False), ("second", False)]
    assert _assert_markers_complete(out, "r1") == [("first", "image"), ("first", "sketch"),
                                                   ("second", "image"), ("second", "sketch")]


@pytest.mark.usefixtures("ray_local")
def test_outage_from_the_start_fails_fast_naming_the_root(corpus, s3_server,  # noqa: ANN001
                                                          fault_proxy: S3FaultProxy) -> None:
    fault_proxy.outage()
    config = _config("s3://test/faults-down/out", str(corpus.manifest), ["builtin:pixelstats"],
                     _proxied(fault_proxy, s3_server, max_attempts=2))
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"failed on s3://test\b.*(SLOW_DOWN|503)") as info:
        embed_run(config, echo=lambda _: None)   # the first request checks the root's bucket
    assert time.monotonic() - started < 60
    assert s3_server.secret_key not in str(info.value)
    assert fault_proxy.stats.forwarded == 0


def test_a_body_cut_off_after_its_headers_is_read_again(s3_options, s3_server,  # noqa: ANN001
                                                        fault_proxy: S3FaultProxy,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole-object read is tried again on a transient error: the SDK retries a request whose answer
    fails, but not a Parquet body cut off mid-stream ("Failed to flush response stream", seen once in the
    flaky embed run above, on the driver's read-back of a written part). The SDK's own retries are off
    here (max_attempts=1), so each cut reaches the storage layer."""
    import embedeval.io.storage as storage_module

    direct = Storage("s3://test/faults-cut", s3_options)
    table = pa.table({"id": [f"item-{i}" for i in range(2000)], "x": np.arange(2000.0)})
    direct.write_parquet("t.parquet", table)
    direct.write_bytes("m.json", b'{"ok": true}')
    through = Storage("s3://test/faults-cut", _proxied(fault_proxy, s3_server, max_attempts=1))
    for read in (lambda: through.read_parquet(["t.parquet"]).equals(table),
                 lambda: through.read_json("m.json") == {"ok": True}):
        fault_proxy.fail_next(1, "reset_mid")
        assert read()
    fault_proxy.flaky(rate=0.0, kinds=("reset_mid",), rate_by_method={"GET": 1.0})   # every GET cut off
    with pytest.raises(StorageError, match="t.parquet"):
        through.read_parquet(["t.parquet"])                 # a lasting fault: one line naming the file
    fault_proxy.clean()
    monkeypatch.setattr(storage_module, "BODY_READ_ATTEMPTS", 1)   # without the read's own retry: fails
    fault_proxy.fail_next(1, "reset_mid")
    with pytest.raises(StorageError, match="m.json"):
        through.read_json("m.json")


def test_read_committed_through_a_flaky_store(s3_options, s3_server,  # noqa: ANN001
                                              fault_proxy: S3FaultProxy) -> None:
    """The score side reads committed partitions (marker + listed files) through the same flaky store."""
    direct = Storage("s3://test/faults-read", s3_options)
    rng = np.random.default_rng(0)
    files = []
    for k in range(6):
        ids = [f"item-{k}-{i:03d}" for i in range(40)]
        table = embeddings_table(ids, np.zeros(40, np.int16), rng.normal(size=(40, 16)).astype(np.float32))
        path = f"runs/r1/embeddings/model=m/modality=image/part-{k}.parquet"
        direct.write_parquet(path, table)
        files.append(PartFile(path, table.num_rows, table_checksum(table)))
    write_commit_marker(direct, CommitRecord("r1", "m", "image", 16, files, 240, 0))
    expected = read_committed(direct, "r1", "m", "image")

    # Here a slow answer is slower than the client waits: it times out and tries again.
    fault_proxy.slow_s = 4.0
    fault_proxy.flaky(rate=0.2)
    flaky = Storage("s3://test/faults-read", _proxied(fault_proxy, s3_server, request_timeout_s=1.0))
    for _ in range(2):
        assert list_committed(flaky, "r1") == [("m", "image")]
        got = read_committed(flaky, "r1", "m", "image")
        assert list(got.ids) == list(expected.ids)
        np.testing.assert_array_equal(got.vectors, expected.vectors)
    stats = fault_proxy.stats
    print(f"flaky reads: {stats}")
    assert stats.injected >= 5 and set(stats.faults) == set(FAULT_KINDS), stats
    assert stats.abandoned >= 1, stats       # a slow answer was given up on by the client, then retried
    assert flaky.exists(f"runs/r1/embeddings/model=m/modality=image/{COMMIT_MARKER}")


def test_media_reads_retry_transient_errors_only(s3_options, s3_server,  # noqa: ANN001
                                                 fault_proxy: S3FaultProxy) -> None:
    """An image read outlives a burst of errors longer than the S3 client's own retries; a missing file or a
    lasting outage is given up on (quarantined as unreadable) after a bounded number of requests."""
    Storage("s3://test/faults-media", s3_options).write_bytes("a.png", b"\x89PNG not really")
    reader = MediaReader(Storage("s3://test", _proxied(fault_proxy, s3_server, max_attempts=2)), read_attempts=3,
                         retry_pause_s=0.05)

    fault_proxy.fail_next(3)    # both client attempts of the first try, and the first of the second try
    assert reader.read_bytes("s3://test/faults-media/a.png") == b"\x89PNG not really"
    assert fault_proxy.stats.faults["slowdown"] == 3

    fault_proxy.reset_stats()
    with pytest.raises(BadItem, match="missing file"):
        reader.read_bytes("s3://test/faults-media/none.png")
    assert fault_proxy.stats.injected == 0 and fault_proxy.stats.requests <= 3    # not retried

    fault_proxy.outage()
    fault_proxy.reset_stats()
    with pytest.raises(BadItem, match=r"cannot read s3://test/faults-media/a\.png \(after 3 attempts\)"):
        reader.read_bytes("s3://test/faults-media/a.png")
    assert fault_proxy.stats.requests == 3 * 2                                       # attempts x client attempts
