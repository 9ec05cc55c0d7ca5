"""The shared core: settings (one source of truth), names that become paths, atomic files, folder claims."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from toolkit.core import outdir
from toolkit.core.errors import AugurError, UsageError
from toolkit.core.files import append_jsonl, atomic_write, read_jsonl, remove_partials, write_json
from toolkit.core.names import check_identifier, check_label, path_name
from toolkit.core.settings import (HP, SettingError, check_hparams, click_options, from_cli, from_mapping, seed_setting,
                                   setting)
from toolkit.core.tables import format_table


@dataclasses.dataclass
class Demo:
    size: int = setting(32, "Side.", min=16, max=1024)
    lr: float = setting(1e-3, "Rate.", min=0.0, min_open=True)
    mode: str = setting("a", "Mode.", choices=("a", "b"))
    tags: list[str] | None = setting(None, "Tags.")
    flag: bool = setting(False, "A switch.")
    steps: int | None = setting(None, "Steps.", min=1, none_word="auto")
    seed: int = seed_setting()
    quiet: bool = setting(False, "Quiet.", is_flag=True, recipe=False)

    def check(self):
        if self.mode == "b" and not self.tags:
            raise SettingError("tags", "mode b needs tags")


def cli_of(cls):
    @click.command()
    @click_options(cls)
    def cmd(**kw):
        click.echo(repr(from_cli(cls, kw)))

    return cmd


def test_one_dataclass_drives_options_defaults_and_validation():
    cmd = cli_of(Demo)
    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 0 and "Demo(size=32, lr=0.001, mode='a', tags=None, flag=False, steps=None, seed=0" in res.output
    res = CliRunner().invoke(cmd, ["--size", "64", "--tags", "x,y", "--flag", "--steps", "auto", "--seed", "4294967295"])
    assert "size=64" in res.output and "tags=['x', 'y']" in res.output and "flag=True" in res.output
    for args, fragment in ((["--size", "8"], "must be >= 16"), (["--lr", "nan"], "finite"), (["--lr", "0"], "> 0"),
                           (["--mode", "c"], "'c' is not one of a, b"), (["--seed", "-1"], ">= 0"),
                           (["--seed", "4294967296"], "<= 4.29497e+09"), (["--size", "x"], "integer")):
        res = CliRunner().invoke(cmd, args)
        assert res.exit_code == 2 and fragment in res.output, (args, res.output)
    help_text = CliRunner().invoke(cmd, ["--help"]).output
    assert "--flag / --no-flag" in help_text and "[a|b]" in help_text and "Side." in help_text
    with pytest.raises(UsageError, match="--tags: mode b needs tags"):
        from_cli(Demo, {"mode": "b"})


def test_recipe_sections_use_the_same_declaration():
    assert from_mapping(Demo, {"size": 64, "tags": ["a"], "lr": 1}, "r.yaml: x").lr == 1.0
    for raw, fragment in (({"size": 8}, "r.yaml: x.size: must be >= 16"), ({"sizes": 8}, "r.yaml: x.sizes: unknown key"),
                          ({"flag": "yes"}, "x.flag: expected true or false"), ({"quiet": True}, "x.quiet: unknown key"),
                          ({"mode": "b"}, "x.tags: mode b needs tags"), ({"lr": float("inf")}, "finite")):
        with pytest.raises(AugurError, match=fragment):
            from_mapping(Demo, raw, "r.yaml: x")


def test_typed_hyperparameters():
    """`--hp key=value` texts typed against their declarations (what a config's check runs), and the command
    line's own refusals (no `=`, a key given twice) as usage errors."""
    declared = {"lambda": HP(100.0, min=0.0), "memory": HP(200, min=1), "selection": HP("random", choices=("random", "herding")),
                "on": HP(False)}
    texts = {"lambda": "1e4", "memory": "50", "selection": "herding", "on": "true"}
    got = check_hparams(texts, declared, "ewc", UsageError, "--hp: ")
    assert got == {"lambda": 10000.0, "memory": 50, "selection": "herding", "on": True}
    assert isinstance(got["lambda"], float)  # '1e4' is a number, not the string YAML 1.1 would make of it
    for items, fragment in (({"lambda": "high"}, "lambda takes a number"), ({"lambda": "[1,2]"}, "lambda takes a number"),
                            ({"memory": "0"}, "memory must be >= 1"), ({"selection": "best"}, "'best' is not one of"),
                            ({"alpha": "1"}, "has no hyper-parameter 'alpha'"), ({"lambda": "nan"}, "finite")):
        with pytest.raises(UsageError, match=fragment):
            check_hparams(items, declared, "ewc", UsageError, "--hp: ")
    from cli import main

    for args, fragment in ((["--hp", "memory"], "key=value"), (["--hp", "lambda=1", "--hp", "lambda=2"], "given twice"),
                           (["--hp", "lambda=high"], "lambda takes a number")):
        res = CliRunner().invoke(main, ["cl", "--strategy", "ewc", "--data", "digits", "--out", "unused", *args])
        assert res.exit_code == 2 and fragment in res.output, res.output


def test_path_names_are_safe_bounded_and_injective():
    labels = ["AC/DC", "AC_DC", "AC DC", "ac dc", ".hidden", "..", "CON", "con.txt", "a" * 300, "b" * 300, "é", "e",
              "crane (bird)", "dog", "x\\y", "trailing.", "trailing ", "x:y", "Dog", "DOG", "-dash", ""]
    names = [path_name(lab) for lab in labels]
    assert len(set(names)) == len(labels)
    assert len({n.lower() for n in names}) == len(labels)  # also on case-insensitive file systems
    for lab, n in zip(labels, names):
        assert n and len(n) <= 80 and "/" not in n and "\\" not in n and not n.startswith((".", "-"))
        assert n not in (".", "..") and n.split(".")[0].lower() not in ("con", "nul", "aux", "prn")
        assert not any(c in n for c in '<>:"|?*') and not n.endswith((" ", "."))
    assert path_name("dog") == "dog" and path_name("crane (bird)") == "crane (bird)"  # readable where possible
    with pytest.raises(AugurError, match="control character"):
        check_label("a\nb", "class name")
    with pytest.raises(AugurError, match="control character"):
        check_label("a\x00b", "class name")
    for bad in ("../../ESCAPED", "a/b", "", ".hidden", "x" * 200, "a..b"):
        with pytest.raises(AugurError, match="not a valid name"):
            check_identifier(bad, "model name")
    assert check_identifier("qwen2.5-7b-instruct-q4km", "x") == "qwen2.5-7b-instruct-q4km"


def test_atomic_write_leaves_nothing_on_failure_and_has_normal_permissions(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    assert oct(stat.S_IMODE(os.stat(target).st_mode)) == oct(0o666 & ~_umask())
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "x": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_jsonl_torn_tail_is_dropped_only_when_asked(tmp_path):
    f = tmp_path / "m.jsonl"
    append_jsonl(f, [{"a": 1}, {"a": 2}])
    with open(f, "a") as fh:
        fh.write('{"a": 3')
    assert read_jsonl(f, tolerate_torn_tail=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(AugurError, match="m.jsonl:3: not valid JSON"):
        read_jsonl(f)


def test_claims_refuse_foreign_folders_and_second_writers(tmp_path):
    out = tmp_path / "o"
    c = outdir.claim(out, "dg", {"a": 1})
    with pytest.raises(AugurError, match="another process is writing to"):
        outdir.claim(out, "dg", {"a": 1})
    (out / "runs").mkdir()  # the run wrote something: its settings now belong to the folder
    c.release()
    again = outdir.claim(out, "dg", {"a": 1})
    assert again.resumed
    again.release()
    with pytest.raises(AugurError, match="holds a dg run with other settings \\(differs in: a\\)"):
        outdir.claim(out, "dg", {"a": 2})
    with pytest.raises(AugurError, match="holds a dg run, not a pretrain run"):
        outdir.claim(out, "pretrain", {"a": 1}, force=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "run.json").write_text("{}")
    with pytest.raises(AugurError, match="not empty and holds no extrapolate run"):
        outdir.claim(tmp_path / "mine", "extrapolate", {}, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AugurError, match="is a file, not a folder"):
        outdir.claim(tmp_path / "file", "cl", {})
    with pytest.raises(AugurError, match="is a file, not a folder"):
        outdir.claim(tmp_path / "file" / "sub", "cl", {})
    # --force replaces a run of the same stage
    p = outdir.claim(tmp_path / "pt", "pretrain", {"lr": 1})
    (tmp_path / "pt" / "backbone.safetensors").write_text("old")
    p.release()
    outdir.claim(tmp_path / "pt", "pretrain", {"lr": 2}, force=True).release()
    assert not (tmp_path / "pt" / "backbone.safetensors").exists()


def test_a_run_that_wrote_nothing_does_not_pin_its_settings(tmp_path):
    """A first run that fails before writing (a truncated model, a corrupt weights file) leaves no record: the
    corrected command is a new run, not 'another run with other settings'. One that wrote something stays."""
    out = tmp_path / "o"
    outdir.claim(out, "extrapolate", {"model": "truncated.gguf"}).release()  # failed: no finish()
    assert not out.exists()  # it made the folder, and takes it back
    outdir.claim(out, "extrapolate", {"model": "good.gguf"}).finish()
    assert outdir.claim(out, "extrapolate", {"model": "good.gguf"}).resumed
    (tmp_path / "existing").mkdir()
    outdir.claim(tmp_path / "existing", "dg", {"w": "corrupt"}).release()
    assert (tmp_path / "existing").is_dir() and not (tmp_path / "existing" / "dg.json").exists()  # not ours to remove
    c = outdir.claim(tmp_path / "wrote", "dg", {"w": 1})
    (tmp_path / "wrote" / "runs").mkdir()
    c.release()
    with pytest.raises(AugurError, match="differs in: w"):
        outdir.claim(tmp_path / "wrote", "dg", {"w": 2})


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    out = tmp_path / "o"
    code = ("import sys, time; sys.path.insert(0, %r); from toolkit.core import outdir; "
            "c = outdir.claim(%r, 'cl', {}); print('held', flush=True); time.sleep(60)") % (
        str(Path(__file__).resolve().parent.parent), str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(AugurError, match=r"another process is writing to .*\(pid \d+\)"):
        outdir.claim(out, "cl", {})
    proc.kill()
    proc.wait()
    outdir.claim(out, "cl", {}).release()


def test_leftover_temp_files_are_cleared_on_claim(tmp_path):
    out = tmp_path / "o"
    c = outdir.claim(out, "render", {"x": 1})
    (out / "d" / "c").mkdir(parents=True)  # the killed run had started writing
    c.release()
    for p in (out / ".manifest.jsonl.abc.part", out / "d" / "c" / ".img.png.xyz.part"):
        p.write_text("torn")
    (out / ".state.tmp").mkdir()
    outdir.claim(out, "render", {"x": 1}).release()
    assert not list(out.rglob("*.part")) and not (out / ".state.tmp").exists()
    assert remove_partials(out) == []


@pytest.mark.skipif(not outdir.CONVERSION_DROPS, reason="flock conversions exist on POSIX only")
def test_a_shard_keeps_the_folder_when_its_upgrade_is_refused(tmp_path):
    """flock(2) drops a lock whose non-blocking conversion is refused. A shard that lost its shared lock
    let a finishing sibling think it was alone and delete the shard's temp files mid-write (an
    `accelerate launch` render failed so). Each claim below is its own open file: its own lock holder."""
    out = tmp_path / "o"
    a = outdir.claim(out, "render", {"x": 1}, shard=(0, 2))  # alone: upgrades, clears, shares again
    b = outdir.claim(out, "render", {"x": 1}, shard=(1, 2))  # its upgrade is refused: a holds the folder
    (out / "d").mkdir()
    (out / "d" / ".img.png.abc.part").write_text("b writing")
    a.finish()  # a's upgrade is refused too (b holds the folder): b's temp file stays
    assert (out / "d" / ".img.png.abc.part").exists()
    with pytest.raises(AugurError, match="another process is writing to"):
        outdir.claim(out, "render", {"x": 1})  # b still holds it after its refused upgrade
    a = outdir.claim(out, "render", {"x": 1}, shard=(0, 2))
    assert not a.locks[0].try_exclusive() and not b.locks[0].try_exclusive()
    b.release()
    with pytest.raises(AugurError, match="another process is writing to"):
        outdir.claim(out, "render", {"x": 1})  # a still holds it after its refused upgrade
    a.finish()  # alone now: the killed writer's temp file goes
    assert not (out / "d" / ".img.png.abc.part").exists()
    outdir.claim(out, "render", {"x": 1}).release()


def test_a_shard_waits_out_a_sibling_shards_exclusive_moment(tmp_path):
    """A shard alone in the folder holds it exclusive while it clears temp files; a sibling starting
    then waits (a whole run holding the folder is refused at once: test above)."""
    out = tmp_path / "o"
    first = outdir.claim(out, "render", {"x": 1}, shard=(0, 2))
    (out / "d").mkdir()
    first.release()
    moment = outdir.Lock(out / outdir.LOCK, True, str(out))
    real, refused = outdir._lock, []

    def lock(fd, exclusive):  # the sibling's moment ends when the shard has been refused once: an event, no clock
        got = real(fd, exclusive)
        if not got and not exclusive and not refused:
            refused.append(fd)
            moment.release()
        return got

    outdir._lock = lock
    try:
        c = outdir.claim(out, "render", {"x": 1}, shard=(1, 2))
    finally:
        outdir._lock = real
    assert refused and moment.fd == -1 and c.resumed  # it was refused, waited, and then got the folder
    c.release()


def test_tables():
    plain = format_table(["a", "bb"], [["1", "2"], ["333", "4"]])
    assert plain.splitlines() == ["a    bb", "1    2", "333  4"]
    md = format_table(["a", "b"], [["x|y", "1 ± 2"]], "markdown")
    assert md.splitlines()[2] == "| x\\|y | 1 ± 2 |"
    tex = format_table(["a_b", "c"], [["50%", "1 ± 2"]], "latex", caption="T")
    assert "a\\_b" in tex and "50\\%" in tex and "1 $\\pm$ 2" in tex and "\\caption{T}" in tex
