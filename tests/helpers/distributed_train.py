"""One process of a multi-process training run on CPU (run by tests/test_sharding.py).

Usage: python distributed_train.py WORKDIR STEPS FILES, with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set. Trains the tiny config through the same entry
points as `python -m megabyte_jax.train` and prints one JSON line with this process's view
(on a SIGTERM/SIGINT stop: the step it stopped at, exiting with 128 + signal, as the CLI).
"""

import json
import sys

import jax

from megabyte_jax import sharding
from megabyte_jax.errors import Preempted
from megabyte_jax.experiment import base_config
from megabyte_jax.train import train_and_evaluate


def main():
  workdir, steps = sys.argv[1], int(sys.argv[2])
  assert sharding.maybe_initialize_distributed()
  config = base_config("megabyte", seq_len=64, patch_size=8, global_dim=64, global_layers=1,
                       global_heads=2, local_dim=32, local_layers=1, local_heads=2)
  config.data.update(files=sys.argv[3], eval_fraction=0.25)
  config.train.update(steps=steps, warmup_steps=1, batch_size=8, log_every=1, eval_every=0,
                      checkpoint_every=steps // 2, final_eval=False, tensorboard=False)
  config.mesh.update(data=2, fsdp=-1, tensor=1)
  config.sample.num_bytes = 0
  try:
    result = train_and_evaluate(config, workdir)
  except Preempted as e:
    print(json.dumps({"process": jax.process_index(), "stopped_at": e.step}), flush=True)
    sys.exit(128 + e.signum)
  print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                    "devices": jax.device_count(), "step": result["step"],
                    "train_bpb": result["train_bpb"]}), flush=True)


if __name__ == "__main__":
  main()
