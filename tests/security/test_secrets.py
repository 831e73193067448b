"""A test secret never appears in logs, console output, the copied config, outputs or error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedeval.config import ConfigError, parse_config
from embedeval.demo.corpus import write_demo_corpus
from embedeval.io.storage import S3Options, Storage, StorageError

pytestmark = pytest.mark.usefixtures("ray_local")


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and needle in path.read_bytes():
                hits.append(str(path))
        except OSError:
            continue
    return hits


def test_secret_never_leaks_through_a_full_run(tmp_path: Path, s3_server, s3_options,  # noqa: ANN001
                                               capfd: pytest.CaptureFixture[str]) -> None:
    import ray

    from embedeval.workflow import run_all

    secret = s3_server.secret_key
    corpus = write_demo_corpus(tmp_path / "demo", n_items=16)
    src = Storage("s3://test/secret-cat", s3_options)
    for path in sorted(corpus.root.rglob("*")):
        if path.is_file():
            src.write_bytes(str(path.relative_to(corpus.root)), path.read_bytes())
    # The secret is given in the config itself (the worst case), not only in the environment.
    config = parse_config({
        "root": "s3://test/secret-out", "run_id": "sec", "manifest": "s3://test/secret-cat/manifest.parquet",
        "tag_categories": "s3://test/secret-cat/tag_categories.csv", "models": ["builtin:pixelstats"],
        "s3": {"endpoint_url": s3_server.endpoint_url, "access_key_id": s3_server.access_key,
               "secret_access_key": secret},
    })
    lines: list[str] = []
    run_all(config, echo=lines.append)
    out = capfd.readouterr()
    assert secret not in out.out and secret not in out.err and secret not in "\n".join(lines)
    assert secret not in repr(config) and secret not in str(config.model_dump())
    # Every object the run wrote (config copy, Parquet metadata, reports, errors) is free of it.
    assert _files_containing(s3_server.data_dir, secret.encode()) == []
    # ...and so is every Ray log of this session (driver, workers, raylet, dashboard).
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    assert _files_containing(session_dir / "logs", secret.encode()) == []
    assert secret not in str(ray.get_runtime_context().runtime_env)


def test_storage_errors_do_not_echo_credentials(s3_server) -> None:  # noqa: ANN001
    secret = "another-secret-value-0xdeadbeef"
    bad = Storage("s3://test/x", S3Options(endpoint_url=s3_server.endpoint_url, access_key_id="who",
                                           secret_access_key=secret, max_attempts=1))
    with pytest.raises((StorageError, OSError)) as info:
        bad.read_bytes("f.bin")
    assert secret not in str(info.value) and secret not in repr(info.value)


def test_config_errors_do_not_echo_values() -> None:
    secret = "config-secret-value-42424242"
    with pytest.raises(ConfigError) as info:
        parse_config({"manifest": "m", "models": ["builtin:pixelstats"],
                      "s3": {"secret_access_key": secret, "not_a_key": secret}})
    assert "s3.not_a_key" in str(info.value) and secret not in str(info.value)
