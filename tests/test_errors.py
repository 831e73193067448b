"""User errors: one base class; the CLI and the job entry points print any of them as one line, with its exit code.

The error classes are found by importing every module of the package, so a new error class is covered
(or the walk fails on it) without editing this file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import embedeval
from embedeval import cli
from embedeval.errors import EXIT_JOB_FAILED, EXIT_LEASE_HELD, EXIT_USAGE, EmbedevalError, one_line

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "lib"

# Exceptions the package defines that are not user errors, with the reason none reaches the user.
NOT_USER_ERRORS = {
    "embedeval.pipeline.media.BadItem": "one bad item: the pipeline quarantines it, it never leaves the UDF",
}


@lru_cache(maxsize=1)
def _package_exceptions() -> tuple[type[BaseException], ...]:
    """Every exception class defined in the package, after importing all of its modules."""
    for info in pkgutil.walk_packages(embedeval.__path__, "embedeval."):
        importlib.import_module(info.name)
    found: dict[str, type[BaseException]] = {}
    for name, module in list(sys.modules.items()):
        if not (name == "embedeval" or name.startswith("embedeval.")):
            continue
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__ == name and not value.__name__.startswith("_")):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return tuple(found[k] for k in sorted(found))


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _user_errors() -> list[type[EmbedevalError]]:
    _package_exceptions()
    return sorted(set(_subclasses(EmbedevalError)), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_the_walk_finds_every_kind_of_user_error() -> None:
    names = {c.__name__ for c in _user_errors()}
    assert {"ConfigError", "ManifestError", "StorageError", "EmbeddingsError", "ModelError", "EmbedError",
            "ScoringError", "TagError", "ReportError"} <= names


def test_every_public_exception_of_the_package_is_a_user_error() -> None:
    escaping = [f"{c.__module__}.{c.__qualname__}" for c in _package_exceptions()
                if c is not EmbedevalError and not issubclass(c, EmbedevalError)
                and f"{c.__module__}.{c.__qualname__}" not in NOT_USER_ERRORS]
    assert escaping == [], f"subclass EmbedevalError (or list the class in NOT_USER_ERRORS): {escaping}"


def test_scoring_tag_and_report_errors_are_user_errors_and_still_value_errors() -> None:
    from embedeval.report.scores import ReportError
    from embedeval.scoring.context import ScoringError
    from embedeval.scoring.tags import TagError

    for cls in (ScoringError, TagError, ReportError):
        assert issubclass(cls, EmbedevalError) and issubclass(cls, ValueError)
        assert cls.exit_code == EXIT_JOB_FAILED


def test_exit_codes_keep_the_cli_contract() -> None:
    from embedeval.config import ConfigError
    from embedeval.io.lease import LeaseError, LeaseHeld
    from embedeval.retention import RetentionError

    usage = {ConfigError, LeaseError, RetentionError}
    assert {c.exit_code for c in usage} == {EXIT_USAGE} == {2}
    assert LeaseHeld.exit_code == EXIT_LEASE_HELD == 3
    assert {c.exit_code for c in _user_errors() if c not in usage | {LeaseHeld}} == {EXIT_JOB_FAILED} == {1}


@pytest.mark.parametrize("cls", _user_errors(), ids=lambda c: c.__name__)
def test_cli_prints_each_user_error_as_one_line_with_its_exit_code(
        cls: type[EmbedevalError], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_args: object) -> int:
        raise cls("invalid thing:\n  first.key: too small\n\n  second.key: unknown")

    monkeypatch.setitem(cli.COMMANDS, "runs", fail)
    assert cli.main(["runs", "list", "--root", "unused"]) == cls.exit_code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["embedeval: error: invalid thing: first.key: too small; second.key: unknown"]
    assert captured.out == ""


def test_one_line_never_prints_nothing() -> None:
    assert one_line(EmbedevalError()) == "EmbedevalError"
    assert one_line(EmbedevalError("a\nb")) == "a; b"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_real_command_prints_a_report_error_as_one_line(tmp_path: Path) -> None:
    # ReportError used to escape as a traceback.
    result = _run("-m", "embedeval.cli", "runs", "show", "nope", "--root", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"embedeval: error: run 'nope' not found under {tmp_path}/runs "
                                          f"(runs there: none)"]


@pytest.mark.parametrize("entry", [["-m", "embedeval.cli", "embed"], ["-m", "jobs.embed"], ["-m", "jobs.check"]],
                         ids=["cli", "jobs.embed", "jobs.check"])
def test_entry_points_print_a_multi_line_config_error_as_one_line(entry: list[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("manifest: m.parquet\nmodels: [builtin:pixelstats]\nembed: {batch_size: -1, bogus: 1}\n")
    result = _run(*entry, "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embedeval: error: invalid config {cfg}: embed.batch_size: ")
    assert "; embed.bogus: unknown key" in lines[0]


def test_verbose_adds_the_traceback_before_the_line(tmp_path: Path) -> None:
    result = _run("-m", "embedeval.cli", "-v", "embed", "--config", str(tmp_path / "none.yaml"))
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1] == f"embedeval: error: config file {tmp_path / 'none.yaml'} does not exist"
