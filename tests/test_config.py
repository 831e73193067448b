"""Config validation names the key at fault; written configs carry no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedeval.config import ConfigError, load_config, parse_config, redacted_yaml


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("data,key,message", [
    ({"models": ["builtin:pixelstats"]}, "manifest", "required key is missing"),
    ({"manifest": "m.parquet", "models": ["x"], "embed": {"batch_size": 0}}, "embed.batch_size", "greater than 0"),
    ({"manifest": "m.parquet", "models": ["x"], "embed": {"batchsize": 8}}, "embed.batchsize", "unknown key"),
    ({"manifest": "m.parquet", "models": ["x"], "run_id": "../escape"}, "run_id", "letters, digits"),
    ({"manifest": "m.parquet", "models": []}, "(top level)", "at least one model"),
    ({"manifest": "m.parquet", "models": ["a:b", {"spec": "c:d", "name": "a:b"}]}, "(top level)", "same name"),
    ({"manifest": "m.parquet", "models": ["x"], "embed": {"modalities": ["audio"]}}, "embed.modalities.0", "image"),
    ({"manifest": "m.parquet", "models": ["x"], "embed": {"models_at_once": 2}}, "embed", "needs embed.replicas: tasks"),
])
def test_errors_name_the_key(tmp_path: Path, data: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    text = str(info.value)
    assert key in text and message in text, text


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_relative_paths_are_relative_to_the_config_and_overrides_win(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"manifest": "data/m.parquet", "models": ["builtin:pixelstats"]}),
                      {"run_id": "r7", "embed.batch_size": 4})
    assert cfg.manifest == str(tmp_path / "data/m.parquet")
    assert cfg.run_id == "r7" and cfg.embed.batch_size == 4


def test_redacted_yaml_has_no_secrets() -> None:
    secret = "super-secret-value-123456"
    cfg = parse_config({"manifest": "m.parquet", "models": ["builtin:pixelstats"],
                        "s3": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": secret}})
    text = redacted_yaml(cfg)
    assert secret not in text and "AKIAEXAMPLE" not in text and "redacted" in text
    assert secret not in repr(cfg) and secret not in str(cfg)
    assert cfg.s3.secret_access_key.get_secret_value() == secret
