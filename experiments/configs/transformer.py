"""Moved into the package: megabyte_jax/configs/transformer.py is the one source (installed with
`pip install`; `--config=transformer` finds it). This file keeps `--config=experiments/configs/transformer.py`
working from a checkout."""

from megabyte_jax.configs.transformer import get_config  # pylint: disable=unused-import
