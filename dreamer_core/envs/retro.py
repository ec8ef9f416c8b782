"""Retro console games through stable-retro (``retro:<Game>-<System>[-v0]`` ids).

Owns the mapping of ``EnvConfig`` onto ``stable_retro.make``: the game's frames are the
observation (resized by ``ObsAdapter``), the action space stays ``MultiBinary(12)`` (Genesis
buttons; other systems have their own button count), and action repeat sums rewards.

One emulator per process: stable-retro refuses to create a second emulator while one is open
in the same process. Always ``close()`` a retro env before making the next one; to run
several retro envs at once use ``make_env_pool(cfg, K, backend="async")`` (each env in its own
process; ``backend="auto"`` does this for K > 1). An async pool briefly creates and closes one
env in the calling process to read the spaces, so no other retro env may be open there then.

Only ROMs that are installed can be played; stable-retro 1.0.1 ships just
``Airstriker-Genesis-v0``. Others are imported with ``python -m stable_retro.import PATH``.

Imports: gymnasium, ``dreamer_core.errors``, ``dreamer_core.envs.config`` and
``dreamer_core.envs.wrappers`` (never ``make.py``, which imports this module); stable-retro
lazily (extra [retro]).
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym

from dreamer_core.envs import wrappers
from dreamer_core.envs.config import EnvConfig
from dreamer_core.errors import DreamerError, MissingDependencyError, UnknownEnvError

PREFIX = "retro:"


def import_retro() -> Any:
    """Import stable_retro.

    Raises:
        MissingDependencyError: stable-retro is not installed.
    """
    try:
        import stable_retro
    except ImportError as error:
        raise MissingDependencyError("stable-retro", "retro", "Retro game environments") from error
    return stable_retro


def known_games() -> list[str]:
    """Every game stable-retro has an integration for (ROM installed or not); [] if missing."""
    try:
        stable_retro = import_retro()
    except MissingDependencyError:
        return []
    return list(stable_retro.data.list_games())


def resolve_game(env_id: str) -> str:
    """``'retro:Airstriker-Genesis'`` -> ``'Airstriker-Genesis-v0'`` (the integration's name).

    Raises:
        MissingDependencyError: stable-retro is not installed.
        UnknownEnvError: No integration has this name; the message lists close names.
    """
    name = env_id[len(PREFIX) :] if env_id.startswith(PREFIX) else env_id
    games = list(import_retro().data.list_games())
    for candidate in (name, f"{name}-v0"):
        if candidate in games:
            return candidate
    close = difflib.get_close_matches(name, games, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(PREFIX + game for game in close)}?" if close else ""
    raise UnknownEnvError(
        f"Unknown retro game {name!r}.{hint} Retro ids look like "
        f"'retro:Airstriker-Genesis-v0'; list the games with: python -c \"import stable_retro; "
        f'print(stable_retro.data.list_games())".'
    )


def make_retro(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """One retro game env; observations are its frames, actions ``MultiBinary``.

    Args:
        cfg: Environment config with a ``retro:`` id; ``kwargs`` go to ``stable_retro.make``
            (e.g. ``state``).
        render_mode: ``None`` or ``"rgb_array"`` (the emulator always renders to arrays here).

    Returns:
        The env with action repeat applied (``ObsAdapter`` is added by make.py).

    Raises:
        MissingDependencyError: stable-retro is not installed.
        UnknownEnvError: No such game.
        DreamerError: The ROM is not installed, or another retro emulator is open.
    """
    stable_retro = import_retro()
    game = resolve_game(cfg.id)
    if render_mode not in (None, "rgb_array"):
        raise DreamerError(
            f"Retro envs are made with render_mode='rgb_array' (headless); got {render_mode!r}. "
            f"Drop the render mode and save frames from env.render() instead."
        )
    try:
        env = stable_retro.make(game, render_mode="rgb_array", **dict(cfg.kwargs))
    except FileNotFoundError as error:
        raise DreamerError(
            f"The ROM of the retro game {game!r} is not installed ({error}). stable-retro ships "
            f"only Airstriker-Genesis-v0; import ROMs you own with: python -m stable_retro.import "
            f"PATH (a folder holding the ROM files), then try again."
        ) from error
    except RuntimeError as error:
        if "emulator" not in str(error):
            raise
        raise DreamerError(
            f"Could not start {game!r}: stable-retro allows one emulator per process and "
            f"another retro env is still open. Call close() on that env first, or run several "
            f"retro envs with make_env_pool(..., backend='async') (one process per env)."
        ) from error
    except TypeError as error:
        raise DreamerError(
            f"Could not create retro game {game!r} with kwargs {dict(cfg.kwargs)}: {error}. "
            f"Check EnvConfig.kwargs against stable_retro.make."
        ) from error
    repeat = cfg.effective_action_repeat
    if repeat > 1:
        env = wrappers.ActionRepeat(env, repeat)
    return env
