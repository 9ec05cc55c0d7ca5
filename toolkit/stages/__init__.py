"""The pipeline, one sub-package per stage: extrapolate -> render -> pretrain -> dg | cl."""
