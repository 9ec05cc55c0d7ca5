"""The pipeline, one sub-package per stage: extrapolate -> render -> curate -> pretrain -> dg | cl -> report.

The import below is the one list of the stages, in pipeline order: importing a stage's package registers its
Stage (descriptor.py), and the registry keeps that order; `augur` adds each one's command (cli.py), and
recipes, smoke runs and reports loop over them. A new stage is its folder plus one line here;
tests/test_cli.py checks the list against the folders.
"""

from . import (  # noqa: I001 - pipeline order, not alphabetical
    extrapolate,
    render,
    curate,
    pretrain,
    dg,
    cl,
    report,
)
from .descriptor import STAGES

PACKAGES = tuple(name for name, _ in STAGES.items())  # their names, in that order
