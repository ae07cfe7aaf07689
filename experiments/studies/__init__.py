"""Study specs for `python -m experiments.study --study=NAME[:variant]`: each module here
defines `get_study(variant)` (see `experiments.study`)."""
