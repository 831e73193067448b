"""Storage against a local folder and a real S3 server (rclone): the same calls, the same results."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from embedeval.io.storage import Storage, StorageError


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path) -> Storage:  # noqa: ANN001
    if request.param == "local":
        return Storage(str(tmp_path / "root"))
    opts = request.getfixturevalue("s3_options")
    s = Storage(f"s3://test/{tmp_path.name}", opts)
    s.ensure_bucket()
    return s


def test_round_trip_bytes_json_parquet(storage: Storage) -> None:
    storage.write_bytes("a/b/c.bin", b"hello")
    storage.write_json("a/x.json", {"k": [1, 2]})
    storage.write_parquet("p/part-0.parquet", pa.table({"id": ["a", "b"]}), metadata={"run_id": "r1"})
    assert storage.read_bytes("a/b/c.bin") == b"hello"
    assert storage.read_json("a/x.json") == {"k": [1, 2]}
    t = storage.read_parquet(["p/part-0.parquet"])
    assert t.column("id").to_pylist() == ["a", "b"]
    assert t.schema.metadata[b"run_id"] == b"r1"
    assert storage.list_files("a") == ["a/b/c.bin", "a/x.json"]
    assert storage.exists("a/x.json") and not storage.exists("a/none.json")


def test_delete_dir_removes_everything_below(storage: Storage) -> None:
    storage.write_bytes("d/1", b"1")
    storage.write_bytes("d/e/2", b"2")
    storage.write_bytes("keep/3", b"3")
    storage.delete_dir("d")
    assert storage.list_files("d") == []
    assert storage.list_files("keep") == ["keep/3"]


def test_missing_file_raises_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("nope/none.bin")


def test_wrong_credentials_give_clear_error(s3_server, tmp_path) -> None:  # noqa: ANN001
    from embedeval.io.storage import S3Options

    bad = Storage("s3://test/x", S3Options(endpoint_url=s3_server.endpoint_url, access_key_id="nobody",
                                           secret_access_key="wrong-secret-value", max_attempts=1))
    with pytest.raises((StorageError, OSError)) as info:
        bad.write_bytes("f.bin", b"x")
    assert "wrong-secret-value" not in str(info.value)


def test_checksum_settings_reach_boto3_and_pyarrow_without_import_side_effects(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # rclone (and other S3-compatible servers) reject the SDKs' newer default checksums. boto3 gets the
    # settings in its Config; pyarrow only reads them from the environment, set while an S3FileSystem is
    # made and restored after (the round trips above against rclone prove the filesystem still got them).
    from embedeval.io.storage import S3Options, make_filesystem

    names = ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")
    for name in names:
        monkeypatch.setenv(name, "unset")  # so that monkeypatch restores the variable's first state
        monkeypatch.delenv(name)
    options = S3Options(endpoint_url="http://127.0.0.1:9", access_key_id="a", secret_access_key="b")
    config = options.boto3_client().meta.config
    assert (config.request_checksum_calculation, config.response_checksum_validation) == ("when_required",) * 2
    assert not any(name in os.environ for name in names)
    make_filesystem("s3://bucket/x", options)
    assert not any(name in os.environ for name in names)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")  # the user's choice wins
    assert S3Options().boto3_client().meta.config.request_checksum_calculation == "when_supported"
