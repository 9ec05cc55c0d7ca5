"""Recipes (`augur run`) and reports (`augur report`)."""
