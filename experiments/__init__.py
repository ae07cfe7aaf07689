"""Experiments: configs, the equal-compute and image studies, plots (run from the repo root
as `python -m experiments.NAME`)."""
