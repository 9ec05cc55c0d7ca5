"""The pipeline, one sub-package per stage: extrapolate -> render -> curate -> pretrain -> dg | cl -> report.

PACKAGES is the one list of the stages: `augur` adds each one's command, recipes, smoke runs and
reports loop over them (stages/descriptor.py). A new stage is its folder plus one line here;
tests/test_cli.py checks the list against the folders, and a listed stage missing from an install is an
error, never an absence.
"""

PACKAGES = (
    "extrapolate",
    "render",
    "curate",
    "pretrain",
    "dg",
    "cl",
    "report",
)
