#!/usr/bin/env python
"""Stage 03: train the actor-critic in imagination from a run's frozen world model.

    python 03_train_behavior.py --run runs/cartpole --updates 5000
    python 03_train_behavior.py --run runs/cartpole --dataset data/other --preset S
    python 03_train_behavior.py --run runs/cartpole --resume --updates 10000

Same as `dreamer train-behavior` (see its --help). Writes RUN/behavior.pt,
RUN/checkpoints/behavior_latest.pt, its section of RUN/config.yaml, RUN/behavior_metrics.jsonl and RUN/tb/.
"""

import typer

from dreamer_core.cli import train_behavior

if __name__ == "__main__":
    typer.run(train_behavior)
