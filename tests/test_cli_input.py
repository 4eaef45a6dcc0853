"""Bad input on the command line, as a new user's walk-through met it: one line naming the thing and what is
allowed, exit 2, never a traceback; nothing measured is lost or mixed with another plan's records."""

from __future__ import annotations

from click.testing import CliRunner

from lmbench.cli import cli


def lmbench(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error(result) -> str:
    """The one line of a refusal (exit 2), without its `lmbench: error: ` prefix."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line, = result.stderr.strip().splitlines()
    assert line.startswith("lmbench: error: "), line
    return line.removeprefix("lmbench: error: ")


# 3. Files that are not UTF-8 text.

def test_a_suite_file_that_is_not_utf8_is_bad_input(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe[defaults]\n")
    assert error(lmbench("run", "--suite", path, "--dry-run")) == (
        f"{path}: not UTF-8 text (byte 0xff at offset 0); a suite file is TOML, which is UTF-8")
