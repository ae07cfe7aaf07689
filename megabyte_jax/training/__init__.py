"""Training: the loop (`loop.train_and_evaluate`), the one setup it and the benchmarks build
from a config (`setup.TrainSetup`), its result record (`result.TrainResult`), the train
state and optimizer (`train_state`), one step (`train_step`), losses, metrics, checkpoints
and work directories (`checkpoint`, `workdir`, `workdir_lock`), the config as trained and
its history (`history`), and the progress display (`progress`)."""
