"""The CLI: help with examples for every command; clear errors and exit codes for bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedeval.cli import main


@pytest.mark.parametrize("argv", [[], ["demo"], ["embed"], ["score"], ["report"], ["run"], ["runs"]])
def test_every_help_shows_examples(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "embedeval" in out


def test_bad_config_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("manifest: m.parquet\nmodels: [builtin:pixelstats]\nembed: {batch_size: -1}\n")
    assert main(["embed", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "embed.batch_size" in err and "Traceback" not in err


def test_missing_manifest_exits_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"root: {tmp_path / 'out'}\nmanifest: none.parquet\nmodels: [builtin:pixelstats]\n")
    assert main(["embed", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_runs_list_on_empty_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "list", "--root", str(tmp_path)]) == 0
    assert "no runs" in capsys.readouterr().out
