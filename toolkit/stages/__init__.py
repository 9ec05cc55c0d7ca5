"""The pipeline, one sub-package per stage: extrapolate -> render -> curate -> pretrain -> dg | cl -> report.

PIPELINE is the one list of the stages, in order: importing a stage's package registers its Stage
(descriptor.py), `augur` adds each one's command (cli.py), and recipes, smoke runs and reports loop over
them. A new stage is its folder plus one line here; tests/test_cli.py checks the list against the folders.
"""

from . import cl, curate, dg, extrapolate, pretrain, render, report

PIPELINE = (
    extrapolate,
    render,
    curate,
    pretrain,
    dg,
    cl,
    report,
)
PACKAGES = tuple(package.__name__.rpartition(".")[2] for package in PIPELINE)
