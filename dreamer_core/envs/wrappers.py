"""Small gymnasium wrappers shared by every suite, and the image helpers they use.

Owns the observation convention of the package (``ObsAdapter``)::

    env's own observation              ->  Dict observation
    image Box uint8 [H, W, C|none]         image  uint8 [h, w, 3 | 1]   (resized to cfg.size)
    Box (any other shape)                  vector float32 [prod(shape)]
    Discrete(n)                            vector float32 [n] one-hot
    other spaces (MultiDiscrete, Tuple)    vector float32 (gymnasium.spaces.flatten)
    Dict                                   same keys; image values resized, others as above
    obs="pixels"                           image from env.render() instead of the state
    obs="both"                             image from env.render() plus the state keys

Images: a ``Box`` of dtype uint8 with shape ``[H, W, C]``, ``C`` in {1, 3, 4} (alpha is
dropped), or ``[H, W]`` with both sides >= 16 (grayscale frame). Resizing uses OpenCV's
``INTER_AREA`` when OpenCV is installed, else Pillow's box filter.

Imports: numpy and gymnasium (OpenCV or Pillow lazily); nothing from dreamer_core except errors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from dreamer_core.errors import DreamerError

IMAGE_KEY = "image"
VECTOR_KEY = "vector"
# Luma weights of ITU-R BT.601, as used by OpenCV's RGB2GRAY.
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

Converter = Callable[[Any], np.ndarray]


@functools.cache
def _opencv() -> Any:
    """The cv2 module, or None: OpenCV is optional (extra [atari]), Pillow is a core dependency."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def is_image_space(space: gym.Space) -> bool:
    """True for uint8 Boxes shaped like a frame: ``[H, W, 1|3|4]`` or ``[H, W]`` (H, W >= 16)."""
    if not isinstance(space, gym.spaces.Box) or space.dtype != np.uint8:
        return False
    shape = space.shape
    if len(shape) == 3:
        return shape[-1] in (1, 3, 4) and min(shape[:2]) > 1
    return len(shape) == 2 and min(shape) >= 16


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``[H, W, C]`` image to ``size = (height, width)``, keeping the channel axis."""
    height, width = size
    channels = image.shape[-1]
    cv2 = _opencv()
    if cv2 is not None:
        out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    else:
        from PIL import Image

        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        out = np.asarray(pil.resize((width, height), Image.BOX))
    return out.reshape(height, width, channels)


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` -> ``[H, W, 1]`` (BT.601 luma)."""
    cv2 = _opencv()
    if cv2 is not None:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    else:
        gray = (image.astype(np.float32) @ _GRAY_WEIGHTS + 0.5).clip(0, 255).astype(np.uint8)
    return gray[..., None]


def image_converter(size: tuple[int, int], grayscale: bool) -> Converter:
    """A function that turns any uint8 frame into a fresh ``[H, W, 1|3]`` array of ``size``."""
    size = tuple(size)

    def convert(image: Any) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise DreamerError(
                f"Expected a uint8 frame, got dtype {image.dtype}; render frames and image "
                f"observations must be uint8 [H, W, C]."
            )
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 4:
            image = image[..., :3]
        if grayscale and image.shape[-1] == 3:
            image = to_grayscale(np.ascontiguousarray(image))
        if image.shape[:2] != size:
            return resize_image(np.ascontiguousarray(image), size)
        # Always hand out a fresh array: envs may reuse their buffers.
        return np.array(image, dtype=np.uint8, copy=True)

    return convert


def image_space(size: tuple[int, int], channels: int) -> gym.spaces.Box:
    """The Box of one converted image."""
    return gym.spaces.Box(0, 255, (size[0], size[1], channels), np.uint8)


def vector_part(space: gym.Space) -> tuple[Converter, gym.spaces.Box]:
    """Converter and space that turn an observation of ``space`` into a flat float32 vector."""
    if isinstance(space, gym.spaces.Box):
        low = np.asarray(space.low, dtype=np.float32).reshape(-1)
        high = np.asarray(space.high, dtype=np.float32).reshape(-1)

        def convert_box(obs: Any) -> np.ndarray:
            return np.array(obs, dtype=np.float32).reshape(-1)

        return convert_box, gym.spaces.Box(low, high, dtype=np.float32)
    if isinstance(space, gym.spaces.Discrete):
        n, start = int(space.n), int(space.start)

        def convert_discrete(obs: Any) -> np.ndarray:
            one_hot = np.zeros(n, dtype=np.float32)
            one_hot[int(obs) - start] = 1.0
            return one_hot

        return convert_discrete, gym.spaces.Box(0.0, 1.0, (n,), np.float32)
    try:
        flat = gym.spaces.flatten_space(space)
    except NotImplementedError as error:
        raise DreamerError(
            f"Observation space {space} cannot be flattened into a vector; wrap the env so "
            f"its observations are Box, Discrete or Dict spaces."
        ) from error

    def convert_other(obs: Any) -> np.ndarray:
        return np.asarray(gym.spaces.flatten(space, obs), dtype=np.float32)

    return convert_other, gym.spaces.Box(
        np.asarray(flat.low, np.float32), np.asarray(flat.high, np.float32), dtype=np.float32
    )


class ActionRepeat(gym.Wrapper):
    """Repeat each action ``repeat`` times, summing rewards; stops early when the episode ends."""

    def __init__(self, env: gym.Env, repeat: int):
        """Wrap ``env``.

        Args:
            env: The env to wrap.
            repeat: Env steps per agent step (>= 1).
        """
        super().__init__(env)
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.repeat = repeat

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """Step ``repeat`` times (fewer if the episode ends) and sum the rewards."""
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class ObsAdapter(gym.Wrapper):
    """Convert observations to the package's Dict convention (see the module docstring).

    It is the outermost wrapper of every env from ``make_env``, so it also applies the seed
    given to ``make_env`` at the first reset that comes without a seed.
    """

    def __init__(
        self,
        env: gym.Env,
        obs: str = "default",
        size: tuple[int, int] = (64, 64),
        grayscale: bool = False,
        seed: int | None = None,
    ):
        """Wrap ``env``.

        Args:
            env: The env to wrap; must render ``rgb_array`` frames when ``obs`` is not default.
            obs: ``"default"``, ``"pixels"`` or ``"both"``.
            size: Height and width of every image key.
            grayscale: Images get one channel instead of three.
            seed: Used by the first ``reset`` called without a seed.
        """
        super().__init__(env)
        self._pending_seed = seed
        channels = 1 if grayscale else 3
        convert_image = image_converter(size, grayscale)
        inner = env.observation_space
        # parts: (key, converter of the env's obs, space); render_key gets env.render().
        parts: list[tuple[str, Converter, gym.Space]] = []
        if isinstance(inner, gym.spaces.Dict):
            for key, sub in inner.spaces.items():
                if is_image_space(sub):
                    parts.append((key, _item(key, convert_image), image_space(size, channels)))
                else:
                    convert, space = vector_part(sub)
                    parts.append((key, _item(key, convert), space))
        elif is_image_space(inner):
            parts.append((IMAGE_KEY, convert_image, image_space(size, channels)))
        else:
            convert, space = vector_part(inner)
            parts.append((VECTOR_KEY, convert, space))
        own_image = any(key == IMAGE_KEY for key, _, _ in parts)
        self._render_key: str | None = None
        if obs == "pixels" and not (own_image and len(parts) == 1):
            parts = []
            self._render_key = IMAGE_KEY
        elif obs == "both" and not own_image:
            self._render_key = IMAGE_KEY
        self._convert_frame = convert_image
        self._parts = tuple((key, convert) for key, convert, _ in parts)
        spaces = {key: space for key, _, space in parts}
        if self._render_key is not None:
            spaces[self._render_key] = image_space(size, channels)
        self.observation_space = gym.spaces.Dict(spaces)
        if len(self._parts) == 1 and self._render_key is None:
            ((key, convert),) = self._parts
            self._observe = lambda raw: {key: convert(raw)}
        else:
            self._observe = self._observe_parts

    def _observe_parts(self, raw: Any) -> dict[str, np.ndarray]:
        out = {key: convert(raw) for key, convert in self._parts}
        if self._render_key is not None:
            frame = self.env.render()
            if frame is None:
                raise DreamerError(
                    "The env returned no frame from render(), so pixel observations are not "
                    "possible; create it with render_mode='rgb_array' or use obs='default'."
                )
            out[self._render_key] = self._convert_frame(frame)
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the env (with the pending seed if none is given) and convert the observation."""
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        raw, info = self.env.reset(seed=seed, options=options)
        return self._observe(raw), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], Any, bool, bool, dict]:
        """Step the env and convert the observation."""
        raw, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(raw), reward, terminated, truncated, info


def _item(key: str, convert: Converter) -> Converter:
    """Apply ``convert`` to ``obs[key]`` of a Dict observation."""
    return lambda raw: convert(raw[key])
