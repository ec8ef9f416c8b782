#!/usr/bin/env python
"""Stage 04: play episodes with a run's agent in the real environment.

    python 04_evaluate.py --run runs/cartpole --episodes 20
    python 04_evaluate.py --run runs/cartpole --episodes 3 --video

Same as `dreamer evaluate` (see its --help). Writes RUN/eval/<timestamp>/report.json,
returns.png and, with --video, one GIF per episode (real | reconstruction | dream).
"""

import typer

from dreamer_core.cli import evaluate

if __name__ == "__main__":
    typer.run(evaluate)
