"""Evaluates a policy on the held-out split(s) of a config's environment.

  python launch/eval.py --config=configs/alfworld.py --workdir=runs/alfworld \
      [--config.model.path=/models/Qwen2.5-1.5B-Instruct] [--config.eval.num_tasks=134]

With checkpoints in --workdir, the latest one is evaluated; otherwise the model at
config.model.path. Prints the metrics and writes sampled episodes to <workdir>/samples/.
Nothing is trained and no metrics row is appended.
"""

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from empg_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints are read).")
_VERBOSE = cli.define_verbose_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  return cli.run("eval.py", _evaluate, workdir=_WORKDIR.value, verbose=_VERBOSE.value)


def _evaluate() -> None:
  from empg_jax import runner
  metrics = runner.evaluate(_CONFIG.value, _WORKDIR.value)
  print(json.dumps(metrics, indent=1, default=float))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("eval.py"))
