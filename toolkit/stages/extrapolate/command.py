"""`augur extrapolate domains | realm | import`."""

from __future__ import annotations

from pathlib import Path

import click

from ...core.commands import echo_result
from ...core.settings import click_options, from_cli
from .config import DomainsConfig, RealmConfig


@click.group()
def extrapolate() -> None:
    """Stage 1: the LLM imagines domains (per class) or classes (per realm), or imports the paper's prompts."""


@extrapolate.command("domains")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click_options(DomainsConfig)
def extrapolate_domains_cmd(out, **kw):
    """Novel domains per class → OUT/prompts.jsonl (Beyond Finite Data)."""
    from .stage import extrapolate_domains

    echo_result(extrapolate_domains(from_cli(DomainsConfig, kw), out))


@extrapolate.command("realm")
@click.argument("realm")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click_options(RealmConfig)
def extrapolate_realm_cmd(realm, out, **kw):
    """Related classes of a REALM with visual descriptions → OUT/classes.jsonl, prompts.jsonl (Premonition)."""
    from .stage import extrapolate_realm

    echo_result(extrapolate_realm(from_cli(RealmConfig, kw, realm=realm), out))


@extrapolate.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--realm", help="The realm the file describes (default: from its file name).")
@click.option("--force", is_flag=True, help="Replace an earlier import in --out.")
def extrapolate_import_cmd(csv_file, out, realm, force):
    """Read a Premonition prompt CSV (the paper's own) into OUT/classes.jsonl + prompts.jsonl."""
    from .importer import import_csv

    echo_result(import_csv(csv_file, out, realm=realm, force=force))
