"""Storage against a local folder and a real S3 server (rclone): the same calls, the same results."""

from __future__ import annotations

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
