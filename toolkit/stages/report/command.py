"""`augur report DIR`."""

from __future__ import annotations

from pathlib import Path

import click

from ...core.settings import click_options
from .config import ReportConfig


@click.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Report folder (default: FOLDER/report).")
@click_options(ReportConfig)
def report_cmd(folder, out, title):
    """Write FOLDER's report (any stage output or run folder) as Markdown and self-contained HTML."""
    from .page import write_report

    paths = write_report(folder, out, title)
    click.echo(f"report: {paths['markdown']} and {paths['html']}")
