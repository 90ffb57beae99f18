"""Foundation tests: the package imports and the console script answers."""

from __future__ import annotations

import subprocess
import sys

import precipdiff
from precipdiff.offline.cli.main import build_parser, main


def test_version_string() -> None:
    parts = precipdiff.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)


def test_cli_version(capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert precipdiff.__version__ in capsys.readouterr().out


def test_console_script_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "precipdiff", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: precipdiff" in out.stdout
    for sub in ("inspect", "generate", "export", "prepare", "train", "qdm", "evaluate", "info"):
        assert sub in out.stdout


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {
        "inspect",
        "generate",
        "export",
        "prepare",
        "train",
        "qdm",
        "evaluate",
        "info",
    }
    for name, p in sub.choices.items():
        assert p.format_help(), name


def test_info_json(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["info", "--json"]) == 0
    assert '"torch": "2.' in capsys.readouterr().out
