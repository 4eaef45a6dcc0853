"""docs/usage.md's table of every command's options, generated from the CLI itself so it cannot fall behind.

    python tests/usage_reference.py      # rewrite the section between the markers in docs/usage.md

tests/test_cli.py holds the file to what this generates.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

USAGE = Path(__file__).resolve().parent.parent / "docs" / "usage.md"
BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def _value(option: click.Option) -> str:
    if option.is_flag:
        return ""
    if isinstance(option.type, click.Choice):
        return " " + "|".join(map(str, option.type.choices))
    names = {"integer": "N", "integer range": "N", "float": "X", "float range": "X"}
    value = " " + (option.metavar or names.get(option.type.name, option.type.name.upper()))
    low, high = getattr(option.type, "min", None), getattr(option.type, "max", None)
    # click's ranges: what is allowed, as the refusal says it.
    above = ">" if getattr(option.type, "min_open", False) else ">="
    below = "<" if getattr(option.type, "max_open", False) else "<="
    if low is not None and high is not None:
        value += f" ({above} {low}, {below} {high})"
    elif low is not None:
        value += f" ({above} {low})"
    elif high is not None:
        value += f" ({below} {high})"
    return value


def _default(option: click.Option) -> str:
    if option.required:
        return "required"
    if option.is_flag:
        return "off"
    if option.multiple or option.default in (None, ()) or option.default is getattr(click.core, "UNSET", object()):
        return "-"
    return f"`{option.default}`"


def reference() -> str:
    """One table per command: each option, its value, its default and its help."""
    from lmbench.cli import cli

    parts = []
    for name in sorted(cli.commands):
        command = cli.commands[name]
        options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
        arguments = " ".join(p.name.upper() for p in command.params if isinstance(p, click.Argument))
        summary = " ".join((command.help or "").strip().split("\n\n")[0].split())
        parts.append(f"**lmbench {name}{' ' + arguments if arguments else ''}**: {summary}\n")
        if not options:
            parts.append("(no options)\n")
            continue
        rows = ["| option | default | what |", "| --- | --- | --- |"]
        for option in options:
            flags = " / ".join(option.opts)
            what = " ".join((option.help or "").split()).replace("|", "\\|")
            rows.append(f"| `{flags}{_value(option).replace('|', chr(92) + '|')}` | {_default(option)} | {what} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def section(text: str) -> str:
    """The part of usage.md between the markers."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


if __name__ == "__main__":
    text = USAGE.read_text(encoding="utf-8")
    if BEGIN not in text:
        sys.exit(f"{USAGE}: no {BEGIN} marker")
    head, rest = text.split(BEGIN, 1)
    USAGE.write_text(f"{head}{BEGIN}\n{reference()}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")
