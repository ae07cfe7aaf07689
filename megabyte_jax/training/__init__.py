"""Training: the train state and optimizer (`train_state`), one step (`train_step`), losses,
metrics, checkpoints and work directories (`checkpoint`, `workdir`, `workdir_lock`)."""
