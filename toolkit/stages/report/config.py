"""The settings of `augur report`, and the stage's own name (page.py reads it: in a run folder's plan, this
stage's row is the page being written)."""

from __future__ import annotations

from dataclasses import dataclass

from ...core.settings import setting

NAME = "report"


@dataclass
class ReportConfig:
    title: str = setting("Augur run", "The report's title.")
