#!/usr/bin/env python
"""Stage 01: run a policy in gymnasium environments and write the rollouts as a dataset.

    python 01_collect.py --env CartPole-v1 --out data/cartpole --steps 20000
    python 01_collect.py --env ALE/Pong-v5 --out data/pong --steps 100000 --num-envs 2
    python 01_collect.py --env CartPole-v1 --pixels --out data/cartpole-pixels --episodes 50

Same as `dreamer collect` (see `dreamer collect --help` for every flag). The dataset is a
directory of HDF5 shards described in data/README.md; `dreamer data info DIR` summarises it.
"""

import typer

from dreamer_core.cli import collect

if __name__ == "__main__":
    typer.run(collect)
