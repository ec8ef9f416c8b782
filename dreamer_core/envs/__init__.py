"""Environments: one ``make_env`` for every suite, batched pools, and tiny dummy envs.

Public API::

    EnvConfig                                   frozen, JSON round-trip (to_dict / from_dict)
    make_env(cfg, seed=None, render_mode=None)  -> gymnasium.Env with a Dict observation space
    make_env_pool(cfg, num_envs, seed, backend) -> EnvPool (serial | async | ale | auto)
    EnvPool                                     reset / step (NEXT_STEP autoreset) / close
    env_ids_like(name, n=5)                     close ids, for error messages

Observation convention (every env from ``make_env``): images under ``image`` (uint8
``[H, W, C]``), flat float32 vectors under ``vector``; Dict envs keep their own keys. See
``wrappers.py``. Importing this package registers the ``dreamer/Dummy*-v0`` envs (dummy.py).

Modules, each importing only those to its left (no cycles)::

    config (EnvConfig), wrappers, dummy  <-  atari, dmc, retro  <-  make  <-  pool

Imports: gymnasium, numpy and ``dreamer_core.errors`` only (never torch); optional suites
(ale-py, stable-retro, dm_control) are imported lazily when an env of theirs is made.
"""

from dreamer_core.envs.config import EnvConfig
from dreamer_core.envs.dummy import register_dummy_envs
from dreamer_core.envs.make import env_ids_like, make_env
from dreamer_core.envs.pool import EnvPool, make_env_pool

register_dummy_envs()

__all__ = ["EnvConfig", "EnvPool", "env_ids_like", "make_env", "make_env_pool"]
