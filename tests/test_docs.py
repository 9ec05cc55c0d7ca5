"""Every command the README and docs/ show is a command of the real CLI.

Each `augur ...` line of a shell block (and the `-m cli ...` part of an `accelerate launch` line) is
parsed by the real Click commands: command names, option names and option values (types, ranges,
choices from the registries) must all be accepted, as they would be when a user pastes the line. The
cheap ones run for real (`--list`, `models list`, `models verify`, `run ... --dry-run`); the expensive
ones (training, rendering) stop after the parse, which is their dry run. `make` lines name real targets.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines(path: Path) -> list[str]:
    """The command lines of a Markdown file's ```sh blocks (continuations joined, comments dropped)."""
    lines, block, pending = [], False, ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            block = raw.strip() in ("```sh", "```bash") if not block else False
            continue
        if not block:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment (no command here quotes a '#')
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def augur_args(line: str) -> list[str] | None:
    words = shlex.split(line)
    if words[:1] == ["augur"]:
        return words[1:]
    if words[:2] == ["accelerate", "launch"] and "-m" in words and words[words.index("-m") + 1] == "cli":
        return words[words.index("-m") + 2:]
    return None


COMMANDS = [(p.relative_to(ROOT).as_posix(), line) for p in DOCS for line in shell_lines(p) if augur_args(line)]
MAKE = sorted({(p.relative_to(ROOT).as_posix(), word) for p in DOCS for line in shell_lines(p)
               for part in line.split("&&") if part.split()[:1] == ["make"]
               for word in shlex.split(part)[1:] if "=" not in word})


def parse(args: list[str]) -> click.Context:
    """What `augur ARGS` does up to the command's own code: every group resolves its subcommand, every
    command converts and checks its options."""
    ctx = main.make_context("augur", list(args))
    cmd: click.Command = main
    while isinstance(cmd, click.Group):
        name, sub, rest = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
    return ctx


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 40, COMMANDS  # the extraction itself works
    assert {"README.md", "docs/stages.md"} <= {doc for doc, _ in COMMANDS}


@pytest.mark.parametrize("doc, line", COMMANDS, ids=[f"{d}:{line[:60]}" for d, line in COMMANDS])
def test_every_documented_command_parses(doc, line):
    try:
        parse(augur_args(line))
    except click.exceptions.ClickException as e:
        pytest.fail(f"{doc}: `{line}` is not a valid command: {e.format_message()}")


CHEAP = re.compile(r"^augur (models list|models verify \S+|dg --list|cl --list|run \S+ .*--dry-run.*)$")


@pytest.mark.parametrize("doc, line", [c for c in COMMANDS if CHEAP.match(c[1])],
                         ids=[f"{d}:{line[:60]}" for d, line in COMMANDS if CHEAP.match(line)])
def test_the_cheap_documented_commands_run(doc, line, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes/... as written in the docs
    args = augur_args(line)
    if "--out" in args:  # nothing of a dry run lands in the repository
        args[args.index("--out") + 1] = str(tmp_path / "out")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, f"{doc}: `{line}` -> {res.output}"
    assert res.output.strip()
    if "--dry-run" in args:
        assert "to run" in res.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("doc, target", MAKE)
def test_documented_make_targets_exist(doc, target):
    assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M), f"{doc}: make {target}"
