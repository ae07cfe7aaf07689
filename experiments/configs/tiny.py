"""Moved into the package: megabyte_jax/configs/tiny.py is the one source (installed with
`pip install`; `--config=tiny` finds it). This file keeps `--config=experiments/configs/tiny.py`
working from a checkout."""

from megabyte_jax.configs.tiny import get_config  # pylint: disable=unused-import
