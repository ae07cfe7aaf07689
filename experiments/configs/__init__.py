"""Experiment configs, read by path (`--config=experiments/configs/NAME.py`); a package so
that configs import each other as modules (`from experiments.configs.ablation import study`),
which works when the repository root is on the Python path (`python -m ...` from it)."""
