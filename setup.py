"""Only what pyproject.toml cannot say: the package list is found (every package under toolkit/, so a new
stage folder is always in the wheel), plus the two package-data folders mapped in from the top level."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["toolkit", "toolkit.*"]) + ["toolkit.shipped.models", "toolkit.shipped.recipes"])
