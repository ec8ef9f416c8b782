#!/usr/bin/env python
"""Stage 02: train the world model offline from datasets written by stage 01.

    python 02_train_world_model.py data/cartpole --out runs/cartpole --updates 5000
    python 02_train_world_model.py data/pong --out runs/pong --preset S --set optim.lr=3e-4
    python 02_train_world_model.py data/cartpole --out runs/cartpole --resume --updates 10000

Same as `dreamer train-world-model` (see its --help). Writes RUN/world_model.pt,
RUN/checkpoints/latest.pt, RUN/config.yaml, RUN/metrics.jsonl and RUN/tb/.
"""

import typer

from dreamer_core.cli import train_world_model

if __name__ == "__main__":
    typer.run(train_world_model)
