"""Moved into the package: megabyte_jax/configs/default.py is the one source (installed with
`pip install`; `--config=default` finds it). This file keeps `--config=experiments/configs/default.py`
working from a checkout."""

from megabyte_jax.configs.default import get_config  # pylint: disable=unused-import
