"""Only what pyproject.toml cannot say: the package list is found (every package under toolkit/, so a new
stage folder is always in the wheel), plus the package-data folders: the two mapped in from the top level, and
CLIP's vocabulary (no __init__.py: data only)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["toolkit", "toolkit.*"]) + ["toolkit.shipped.models", "toolkit.shipped.recipes",
                                                                   "toolkit.stages.extrapolate.clip_vocab"])
