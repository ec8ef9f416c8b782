"""Atari (ALE) environments with Dreamer preprocessing, one at a time or as an ALE vector env.

Owns the mapping of ``EnvConfig`` onto ale-py: ``make_atari`` builds one env as
``gym.make('ALE/<Game>-v5', frameskip=1, repeat_action_probability=sticky, ...)`` followed by
gymnasium's ``AtariPreprocessing`` (frame skip with max-pooling of the last two frames, no-op
starts, optional life-loss termination, resize to ``cfg.size``, optional grayscale);
``ale_vector_env`` builds ale-py's own ``AtariVectorEnv`` with the same preprocessing (one
frame, no reward clipping, no fire reset) for ``make_env_pool(backend="ale")``.

Both count a time limit in agent steps: the single env gets an outer ``TimeLimit`` from
make.py (the ALE frame cap is lifted past it), the vector env gets
``max_num_frames_per_episode = time_limit * frame_skip`` (ALE counts those frames after the
no-op start, so both truncate after the same number of agent steps).

Imports: gymnasium, ``dreamer_core.errors`` and ``dreamer_core.envs.config`` (never
``make.py``, which imports this module); ale-py and OpenCV lazily (extra [atari]).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import gymnasium as gym

from dreamer_core.envs.config import EnvConfig
from dreamer_core.errors import DreamerError, MissingDependencyError, UnknownEnvError

PURPOSE = "Atari environments"
# ALE's own cap on frames per episode (v5 default), kept when no time limit is set.
MAX_FRAMES = 108_000


def import_ale() -> Any:
    """Import ale_py and register its ids with gymnasium.

    Raises:
        MissingDependencyError: ale-py is not installed.
    """
    try:
        import ale_py
    except ImportError as error:
        raise MissingDependencyError("ale-py", "atari", PURPOSE) from error
    gym.register_envs(ale_py)
    return ale_py


def known_ids() -> list[str]:
    """All registered ``ALE/...`` ids, or [] when ale-py is not installed."""
    try:
        import_ale()
    except MissingDependencyError:
        return []
    return [env_id for env_id in gym.registry if env_id.startswith("ALE/")]


def make_atari(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """One Atari env with Dreamer preprocessing; observations are images ``[H, W, 3|1]``.

    Args:
        cfg: Environment config with an ``ALE/<Game>-v5`` id.
        render_mode: Passed to ``gym.make`` (``"rgb_array"`` renders full-size frames).

    Returns:
        The preprocessed env (``ObsAdapter`` is added by make.py).

    Raises:
        MissingDependencyError: ale-py or OpenCV is missing.
        UnknownEnvError: The game is not an ALE id.
    """
    import_ale()
    try:
        import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
    except ImportError as error:
        raise MissingDependencyError(
            "opencv-python-headless", "atari", "Atari preprocessing (frame resizing)"
        ) from error
    if cfg.id not in gym.registry:
        close = difflib.get_close_matches(cfg.id, known_ids(), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownEnvError(
            f"Unknown Atari id {cfg.id!r}.{hint} Atari ids look like 'ALE/Pong-v5' "
            f'(CamelCase game name); list them with: python -c "import gymnasium, ale_py; '
            f"print([i for i in gymnasium.registry if i.startswith('ALE/')])\"."
        )
    frame_skip = cfg.effective_action_repeat
    kwargs = dict(cfg.kwargs)
    if cfg.time_limit:
        # No-op starts also consume ALE frames, hence the margin.
        kwargs.setdefault("max_num_frames_per_episode", cfg.time_limit * frame_skip + cfg.noop_max)
    try:
        env = gym.make(
            cfg.id,
            frameskip=1,
            repeat_action_probability=cfg.sticky_actions,
            full_action_space=cfg.full_action_space,
            render_mode=render_mode,
            **kwargs,
        )
    except TypeError as error:
        raise DreamerError(
            f"Could not create {cfg.id} with kwargs {kwargs}: {error}. Check EnvConfig.kwargs "
            f"against ale_py's AtariEnv arguments."
        ) from error
    height, width = cfg.size
    return gym.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=frame_skip,
        screen_size=(width, height),
        terminal_on_life_loss=cfg.life_loss_terminal,
        grayscale_obs=cfg.grayscale,
        grayscale_newaxis=True,
        scale_obs=False,
    )


def rom_name(env_id: str) -> str:
    """``'ALE/MsPacman-v5'`` -> ``'ms_pacman'`` (the ROM name ale-py's vector env expects)."""
    if env_id in gym.registry and "game" in gym.spec(env_id).kwargs:
        return str(gym.spec(env_id).kwargs["game"])
    game = env_id.split("/", 1)[-1].rsplit("-v", 1)[0]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def ale_vector_unsupported(cfg: EnvConfig) -> str | None:
    """Why ``AtariVectorEnv`` cannot run ``cfg``, or None when it can."""
    try:
        ale_py = import_ale()
    except MissingDependencyError:
        return "ale-py is not installed"
    if not hasattr(ale_py, "AtariVectorEnv"):
        return f"ale-py {getattr(ale_py, '__version__', '?')} has no AtariVectorEnv (needs >= 0.10)"
    if cfg.suite != "atari":
        return f"{cfg.id} is not an 'ALE/...' id"
    if cfg.obs != "default":
        return f"obs={cfg.obs!r} (only the default image observation is supported)"
    if cfg.kwargs:
        return f"extra kwargs {dict(cfg.kwargs)} cannot be passed to AtariVectorEnv"
    from ale_py import roms

    if roms.get_rom_path(rom_name(cfg.id)) is None:
        return f"no ROM named {rom_name(cfg.id)!r} for {cfg.id}"
    return None


def ale_vector_env(cfg: EnvConfig, num_envs: int) -> Any:
    """ale-py's ``AtariVectorEnv`` with the preprocessing of ``make_atari`` and NEXT_STEP autoreset.

    Observations come as ``[K, 1, H, W, 3]`` (rgb) or ``[K, 1, H, W]`` (grayscale), rewards
    as int32; the pool reshapes and casts them.

    Args:
        cfg: Environment config with an ``ALE/...`` id (see ``ale_vector_unsupported``).
        num_envs: Number of emulators K.

    Returns:
        The vector env.
    """
    reason = ale_vector_unsupported(cfg)
    if reason is not None:
        raise DreamerError(
            f"The 'ale' pool backend cannot run this config: {reason}. Use backend='async' "
            f"or 'serial' (or 'auto', which picks one that works)."
        )
    from ale_py import AtariVectorEnv

    frame_skip = cfg.effective_action_repeat
    height, width = cfg.size
    return AtariVectorEnv(
        rom_name(cfg.id),
        num_envs,
        max_num_frames_per_episode=cfg.time_limit * frame_skip if cfg.time_limit else MAX_FRAMES,
        repeat_action_probability=cfg.sticky_actions,
        full_action_space=cfg.full_action_space,
        autoreset_mode="NextStep",
        img_height=height,
        img_width=width,
        grayscale=cfg.grayscale,
        stack_num=1,
        frameskip=frame_skip,
        maxpool=True,
        noop_max=cfg.noop_max,
        episodic_life=cfg.life_loss_terminal,
        reward_clipping=False,
        use_fire_reset=False,
    )
