"""Equal-compute studies: several models trained on the same bytes with matched training FLOPs.

    python -m experiments.study --study=code_equal_compute \\
        --results=experiments/results/code_equal_compute
    python -m experiments.study --study=mnist_scan:cpu --results=DIR
    python -m experiments.study --study=... --results=DIR --plan        # the plan only

A study module (`experiments/studies/*.py`) defines `get_study(variant)`, a dict: the corpus,
the context length and batch of its models, the optimiser settings, the compute budgets
(training FLOPs) and the models. `--study` names it by module: `NAME` for
`experiments.studies.NAME`, a dotted module name (`experiments.configs.ablation.study`), or
the path of its file in the repository (`experiments/studies/NAME.py`), each optionally with
`:variant`. For every budget and model the driver sets

    steps = round(budget / (train FLOPs per byte * batch_size * seq_len))

with FLOPs per byte from `megabyte_jax.flops.model_cost` at the model's context (forward +
backward, attention included), so every model at one budget gets the same training compute.
Models share the data seed, so they read the same stream of documents (cut into windows of
their own context): a model that costs less per byte trains on a longer prefix of it. Each run is a
plain `megabyte_jax.train.train_and_evaluate` run (its own learning-rate schedule over its
own steps), followed by a full evaluation of every held-out byte (each file from an empty
context, in windows of the model's context).

A model dict may also set (`spec.check_study` checks them):

    seq_len, batch_size   its own context and batch (e.g. 8,192 x 8 beside the study's
                          2,048 x 32: the same bytes per step); its steps, bytes, FLOPs
                          per byte, evaluation windows and records use them
    eval_batch_size       its evaluation batch (default: the study's, scaled to hold the
                          same bytes)
    learning_rate         its peak learning rate (e.g. the entries of a sweep)
    budgets               the study's budgets it runs at (default: all); e.g. a model sized
                          for one budget. `--budgets` keeps each model at those of its own
                          among the given ones
    series                the line the plots draw it on (default: its name): one
                          architecture sized per budget, and its learning-rate variants,
                          share one; the plots show each series at its best learning rate

A budget may be "auto": once the earlier budgets are done, it becomes the largest of
`auto_multiples` times the largest finished budget whose runs, estimated from the measured
speed of the finished ones, fit in what is left of `--time_limit_s`. Runs that would not fit
are skipped and recorded as such; finished runs are never redone (run the same command again
to continue a study). A study's `checkpoint_every` (default: only at the end) saves runs on
the way, and `--resume` continues a run that a time limit or a kill cut short from its
newest checkpoint in `--work_root`, instead of starting it again.

Results, in `--results`:

    runs/<run>.json     one record per run (written as soon as it finishes): eval bits per
                        byte, training FLOPs, steps, bytes trained, parameters, wall-clock
                        (whole run, compilation, training), bytes/s, device, config
    results.json        the study, its models (with those of earlier commands into the
                        folder), its corpus manifest (with `eval.share_past`: the share of
                        held-out bytes past the first N bytes of their file, per context N
                        of the study) and every run record
    results.csv         one row per run
    samples/            image studies: sampled and completed images (PNG and .npy)

`python -m experiments.plot_results --results=DIR` draws the plots.

Modules (each imports only those above it):

    records     the result records on disk (runs/*.json, results.json, results.csv, table.md);
                imports nothing else from `experiments`, so `experiments.plot_results` and
                `experiments.images` use it without the driver
    spec        finding, loading and checking a study; budgets, model configs, costs
    runner      corpora, trainings, "auto" budgets, the run loop
    __main__    the command line

This package re-exports `records`' names only: importing `experiments.study.records` runs
this file first, so importing `spec` or `runner` here would make the plots need JAX and
close an import cycle (plot_results -> experiments.study -> runner -> plot_results).
"""

from experiments.study.records import (RESULT_FIELDS, best_runs, best_table, budget_tag,
                                       context_tag, load_runs, markdown_table, model_order,
                                       run_id, save_run, series_labels, series_of, write_csv,
                                       write_results, write_tables)

__all__ = ["RESULT_FIELDS", "best_runs", "best_table", "budget_tag", "context_tag",
           "load_runs", "markdown_table", "model_order", "run_id", "save_run",
           "series_labels", "series_of", "write_csv", "write_results", "write_tables"]
