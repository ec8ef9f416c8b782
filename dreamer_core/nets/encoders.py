"""Observation encoder and decoder over a ``gymnasium.spaces.Dict`` of image and vector keys.

Owns: the key split (``split_keys``: uint8 ``[Hi, Wi, C]`` Boxes are images, float Boxes of
rank 0 or 1 are vectors), the one image scaling used on both sides (``preprocess_image``:
uint8 ``[0, 255]`` -> float ``[-0.5, 0.5]``), the stride-2 CNN and its transposed mirror
(``ConvEncoder``, ``ConvDecoder``), and ``MultiEncoder`` / ``MultiDecoder`` which route every
key (images concatenated on channels into one CNN; vectors symlog'd and concatenated into one
MLP) and return an embedding or one distribution per key.

All leading axes are batch axes: ``[B, T, ...]`` inputs are flattened to ``[B*T, ...]``, run
through the networks in one call, and unflattened (never a loop over time).

Also here: the registry of encoders and decoders by name (``register_encoder``,
``register_decoder``, ``make_encoder``, ``make_decoder``). The world model's config names
the pair it is built with (``model.encoder.name``, ``model.encoder.decoder``; ``default`` is
``MultiEncoder`` / ``MultiDecoder``), and ``world_model.pt`` stores the names, so every stage
rebuilds a user's own networks from the checkpoint: a name may be ``module:name`` (or
``path/to/file.py:name``), and the module is imported first.

Imports: torch, gymnasium, nets.layers / nets.distributions, and errors (DreamerError for a
name nobody registered). Must not import anything else from dreamer_core.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from dreamer_core import files
from dreamer_core.errors import DreamerError
from dreamer_core.nets.distributions import MSEDist, SymlogMSEDist, symlog
from dreamer_core.nets.layers import MLP, ChannelNorm, init_weights, make_act

__all__ = [
    "DEFAULT",
    "ConvDecoder",
    "ConvEncoder",
    "MultiDecoder",
    "MultiEncoder",
    "decoder_names",
    "encoder_names",
    "make_decoder",
    "make_encoder",
    "network_problems",
    "preprocess_image",
    "qualified_name",
    "register_decoder",
    "register_encoder",
    "split_keys",
]

MIN_RES = 4  # the CNN halves the image until its shorter side is 4 (DreamerV3 minres)


def preprocess_image(image: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale uint8 pixels to ``[-0.5, 0.5]``: ``image / 255 - 0.5``.

    The encoder applies it to its inputs, and the decoder's image predictions live in the same
    scale, so score them with ``dist.log_prob(preprocess_image(target_uint8))``.

    Shapes:
        image: ``[..., Hi, Wi, C]`` uint8      returns: same shape, ``dtype``
    """
    return image.to(dtype) / 255.0 - 0.5


def split_keys(obs_space: gym.spaces.Dict) -> tuple[list[str], list[str]]:
    """Sorted image keys (uint8 ``[Hi, Wi, C]`` Boxes) and vector keys (rank 0/1 Boxes)."""
    if not isinstance(obs_space, gym.spaces.Dict):
        raise TypeError(f"expected a gymnasium.spaces.Dict observation space, got {obs_space}")
    images, vectors = [], []
    for key in sorted(obs_space.spaces):
        space = obs_space.spaces[key]
        if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3:
            images.append(key)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) <= 1:
            vectors.append(key)
        else:
            raise ValueError(
                f"observation {key!r}: {space} is neither an image (uint8 Box [Hi, Wi, C]) "
                "nor a vector (Box of rank 0 or 1)"
            )
    if not images and not vectors:
        raise ValueError("the observation space has no keys")
    return images, vectors


def _image_layout(obs_space: gym.spaces.Dict, keys: Sequence[str]) -> tuple[int, int, list[int]]:
    """Common ``(Hi, Wi)`` of all image keys and their channel counts; checks sizes."""
    sizes = {tuple(obs_space[k].shape[:2]) for k in keys}
    if len(sizes) != 1:
        raise ValueError(f"image keys {list(keys)} must share one size to be stacked, got {sizes}")
    ((height, width),) = sizes
    for side in (height, width):
        if side < 2 * MIN_RES or side & (side - 1):
            raise ValueError(
                f"image sides must be powers of two >= {2 * MIN_RES}, got {height}x{width}"
            )
    return height, width, [obs_space[k].shape[2] for k in keys]


def _stage_channels(size: tuple[int, int], depth: int, mults: Sequence[int]) -> list[int]:
    """Channels after each stride-2 stage; stages halve the shorter side down to MIN_RES.

    Stage i has ``depth * mults[i]`` channels; extra stages (images above 64) reuse the last
    multiplier, fewer stages (small images) use the first ones.
    """
    stages = int(math.log2(min(size) // MIN_RES))
    return [depth * mults[min(i, len(mults) - 1)] for i in range(stages)]


def _padding(kernel: int) -> tuple[int, int]:
    """Padding and output padding so a stride-2 (transposed) conv exactly halves (doubles)."""
    pad = (kernel - 1) // 2
    return pad, 2 + 2 * pad - kernel


class ConvEncoder(nn.Module):
    """Stride-2 convolutions, each followed by a channel norm and an activation, then flatten.

    Weights and activations use the channels-last memory format (1.6x faster convolutions and
    norms on CPU than NCHW-contiguous; the norm over channels then needs no copy).

    Shapes:
        x: ``[N, C, Hi, Wi]`` float      returns: ``[N, out_dim]``
    """

    def __init__(
        self,
        in_channels: int,
        size: tuple[int, int],
        depth: int = 32,
        mults: Sequence[int] = (2, 3, 4, 4),
        kernel: int = 4,
        norm: str = "layer",
        act: str = "silu",
    ):
        super().__init__()
        channels = _stage_channels(size, depth, mults)
        pad, _ = _padding(kernel)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels):
            layers += [
                nn.Conv2d(c_in, c_out, kernel, 2, pad, bias=norm == "none"),
                ChannelNorm(norm, c_out),
                make_act(act),
            ]
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        scale = 2 ** len(channels)
        self.out_shape = (channels[-1], size[0] // scale, size[1] // scale)
        self.out_dim = math.prod(self.out_shape)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # [N, C, Hi, Wi], NHWC in memory
        return self.net(x).flatten(1)  # [N, out_dim]


class ConvDecoder(nn.Module):
    """Mirror of ``ConvEncoder``: Linear to the smallest feature map, transposed convs up.

    Every stage but the last has a channel norm and an activation; the last one outputs
    ``out_channels`` with a bias and no activation.

    Shapes:
        feat: ``[N, in_dim]``      returns: ``[N, out_channels, Hi, Wi]``
    """

    def __init__(
        self,
        in_dim: int,
        out_channels: int,
        size: tuple[int, int],
        depth: int = 32,
        mults: Sequence[int] = (2, 3, 4, 4),
        kernel: int = 4,
        norm: str = "layer",
        act: str = "silu",
    ):
        super().__init__()
        channels = _stage_channels(size, depth, mults)[::-1]
        scale = 2 ** len(channels)
        self.in_shape = (channels[0], size[0] // scale, size[1] // scale)
        self.linear = nn.Linear(in_dim, math.prod(self.in_shape), bias=norm == "none")
        self.in_norm = nn.Sequential(ChannelNorm(norm, channels[0]), make_act(act))
        pad, out_pad = _padding(kernel)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, kernel, 2, pad, out_pad, bias=norm == "none"),
                ChannelNorm(norm, c_out),
                make_act(act),
            ]
        layers.append(nn.ConvTranspose2d(channels[-1], out_channels, kernel, 2, pad, out_pad))
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        init_weights(self)  # the last ConvTranspose2d is the output (outscale 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = self.linear(feat).unflatten(-1, self.in_shape)  # [N, C0, h0, w0]
        x = x.contiguous(memory_format=torch.channels_last)  # [N, C, Hi, Wi], NHWC in memory
        return self.net(self.in_norm(x))  # [N, out_channels, Hi, Wi]


class MultiEncoder(nn.Module):
    """Encode a dict of observations into one embedding per step.

    Image keys (uint8) are scaled by ``preprocess_image``, concatenated on channels and
    run through one ``ConvEncoder``; vector keys are flattened, concatenated, symlog'd
    (if ``symlog_inputs``) and run through one ``MLP``. The embedding is the
    concatenation ``[cnn_out, mlp_out]``.

    Args:
        obs_space: Dict space; see ``split_keys`` for how keys are routed.
        cnn_depth: channels of the first CNN stage (stage i has ``cnn_depth * cnn_mults[i]``).
        cnn_mults: channel multipliers per CNN stage.
        mlp_units: vector MLP width.
        mlp_layers: vector MLP depth (0 layers: the symlog'd vector as is).
        norm: normalisation of hidden layers, as in ``MLP``.
        act: activation of hidden layers, as in ``MLP``.
        symlog_inputs: apply ``symlog`` to vector inputs (DreamerV3).
        kernel: conv kernel size (4 as in DreamerV3 2023; 5 as in 2025).

    Shapes:
        obs: key -> ``[..., *space.shape]`` (e.g. ``[B, T, Hi, Wi, C]`` uint8, ``[B, T, V]``)
        returns: ``[..., E]`` with ``E = embed_dim``
    """

    def __init__(
        self,
        obs_space: gym.spaces.Dict,
        cnn_depth: int = 32,
        cnn_mults: Sequence[int] = (2, 3, 4, 4),
        mlp_units: int = 512,
        mlp_layers: int = 2,
        norm: str = "layer",
        act: str = "silu",
        symlog_inputs: bool = True,
        kernel: int = 4,
    ):
        super().__init__()
        self.obs_space = obs_space
        self.image_keys, self.vector_keys = split_keys(obs_space)
        self.symlog_inputs = symlog_inputs
        self.cnn: ConvEncoder | None = None
        self.mlp: MLP | None = None
        self.embed_dim = 0
        if self.image_keys:
            height, width, chans = _image_layout(obs_space, self.image_keys)
            self.cnn = ConvEncoder(
                sum(chans), (height, width), cnn_depth, cnn_mults, kernel, norm, act
            )
            self.embed_dim += self.cnn.out_dim
        if self.vector_keys:
            in_dim = sum(math.prod(obs_space[k].shape) for k in self.vector_keys)
            self.mlp = MLP(in_dim, None, mlp_units, mlp_layers, norm, act)
            self.embed_dim += self.mlp.out_dim

    def _lead(self, obs: Mapping[str, torch.Tensor]) -> torch.Size:
        """The leading (batch) shape shared by all keys; checks each key's trailing shape."""
        leads = set()
        for key in (*self.image_keys, *self.vector_keys):
            shape = self.obs_space[key].shape
            x = obs[key]
            assert tuple(x.shape[x.ndim - len(shape) :]) == shape, (key, x.shape, shape)
            leads.add(tuple(x.shape[: x.ndim - len(shape)]))
        assert len(leads) == 1, f"observation keys disagree on batch shape: {leads}"
        return torch.Size(leads.pop())

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        lead = self._lead(obs)
        parts = []
        if self.cnn is not None:
            images = [
                preprocess_image(obs[k]).reshape(-1, *obs[k].shape[-3:]) for k in self.image_keys
            ]
            x = torch.cat(images, -1).permute(0, 3, 1, 2)  # [N, C, Hi, Wi] (channels-last strides)
            parts.append(self.cnn(x))  # [N, E_cnn]
        if self.mlp is not None:
            vectors = [obs[k].to(torch.float32).reshape(lead.numel(), -1) for k in self.vector_keys]
            x = torch.cat(vectors, -1)  # [N, V]
            parts.append(self.mlp(symlog(x) if self.symlog_inputs else x))  # [N, E_mlp]
        embed = torch.cat(parts, -1).reshape(*lead, -1)  # [..., E]
        assert embed.shape[-1] == self.embed_dim, (embed.shape, self.embed_dim)
        return embed


class MultiDecoder(nn.Module):
    """Decode features into one distribution per observation key.

    Images: one ``ConvDecoder`` predicts all image keys stacked on channels; each key
    gets an ``MSEDist`` over ``[Hi, Wi, C]`` in ``preprocess_image`` scale. Vectors:
    one ``MLP`` trunk, a Linear output per key, a ``SymlogMSEDist`` per key.

    Args:
        feat_dim: input feature size F.
        obs_space: the same Dict space the encoder was built with.
        cnn_depth: as in ``MultiEncoder``.
        cnn_mults: as in ``MultiEncoder``.
        mlp_units: as in ``MultiEncoder``.
        mlp_layers: as in ``MultiEncoder``.
        norm: as in ``MultiEncoder``.
        act: as in ``MultiEncoder``.
        kernel: as in ``MultiEncoder``.

    Shapes:
        feat: ``[..., F]``
        returns: key -> distribution with event shape ``space.shape`` and batch shape ``[...]``
    """

    def __init__(
        self,
        feat_dim: int,
        obs_space: gym.spaces.Dict,
        cnn_depth: int = 32,
        cnn_mults: Sequence[int] = (2, 3, 4, 4),
        mlp_units: int = 512,
        mlp_layers: int = 2,
        norm: str = "layer",
        act: str = "silu",
        kernel: int = 4,
    ):
        super().__init__()
        self.obs_space, self.feat_dim = obs_space, feat_dim
        self.image_keys, self.vector_keys = split_keys(obs_space)
        self.cnn: ConvDecoder | None = None
        self.mlp: MLP | None = None
        if self.image_keys:
            height, width, self.channels = _image_layout(obs_space, self.image_keys)
            size = (height, width)
            self.cnn = ConvDecoder(
                feat_dim, sum(self.channels), size, cnn_depth, cnn_mults, kernel, norm, act
            )
        if self.vector_keys:
            self.mlp = MLP(feat_dim, None, mlp_units, mlp_layers, norm, act)
            self.vector_out = nn.ModuleDict(
                {
                    k: nn.Linear(self.mlp.out_dim, math.prod(obs_space[k].shape))
                    for k in self.vector_keys
                }
            )
            for out in self.vector_out.values():
                init_weights(out)  # outputs, outscale 1 (the trunk and CNN initialise themselves)

    def forward(self, feat: torch.Tensor) -> dict[str, MSEDist | SymlogMSEDist]:
        assert feat.shape[-1] == self.feat_dim, (feat.shape, self.feat_dim)
        lead = feat.shape[:-1]
        flat = feat.reshape(-1, self.feat_dim)  # [N, F]
        dists: dict[str, MSEDist | SymlogMSEDist] = {}
        if self.cnn is not None:
            images = self.cnn(flat).permute(0, 2, 3, 1)  # [N, Hi, Wi, C_total]
            for key, image in zip(self.image_keys, images.split(self.channels, -1)):
                image = image.reshape(*lead, *image.shape[1:])  # [..., Hi, Wi, C]
                dists[key] = MSEDist(image, dims=3)
        if self.mlp is not None:
            hidden = self.mlp(flat)  # [N, units]
            for key in self.vector_keys:
                shape = self.obs_space[key].shape
                pred = self.vector_out[key](hidden).reshape(*lead, *shape)  # [..., *shape]
                dists[key] = SymlogMSEDist(pred, dims=len(shape))
        return dists


# --- encoders and decoders by name -------------------------------------------------------------

DEFAULT = "default"  # MultiEncoder / MultiDecoder
_KINDS = ("encoder", "decoder")


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    module: str  # the module that registered it: how another process finds it again


_REGISTRY: dict[str, dict[str, _Entry]] = {kind: {} for kind in _KINDS}


def register_encoder(name: str, factory: Callable[..., nn.Module] | None = None) -> Any:
    """Register an observation encoder under ``name``, for ``model.encoder.name``.

    Use it as a decorator, ``@register_encoder("mine")`` on a class or function, or call
    ``register_encoder("mine", MyEncoder)``; either returns the factory unchanged.

    The factory is called as ``factory(observation_space, **options)`` with the options
    ``cnn_depth``, ``cnn_mults``, ``mlp_units``, ``mlp_layers``, ``norm``, ``act`` and
    ``symlog_inputs`` of the world model's config (accept ``**kwargs`` for those you do not
    use). It returns a ``torch.nn.Module`` with an int attribute ``embed_dim`` whose forward
    maps a dict of observations ``key -> [..., *space.shape]`` (images uint8, vectors float32)
    to ``[..., embed_dim]``, flattening any leading axes itself.

    The module that calls ``register_encoder`` is recorded: ``world_model.pt`` stores the name
    as ``module:name`` (a file path when the module is not importable by name), so stages 03
    and 04 import that module before they rebuild the model. Registering in a script run as
    ``__main__`` works within that process only. Registering a taken name from another module
    is refused; the same module may register it again (a reloaded module or notebook cell).

    Args:
        name: the name; not empty, without ``:`` (it separates a module from a name).
        factory: the class or function that builds the encoder; None to use as a decorator.

    Returns:
        ``factory``, or a decorator that registers and returns its argument.

    Raises:
        DreamerError: an invalid name, or a name another module registered.
    """
    return _register("encoder", name, factory, _caller_module())


def register_decoder(name: str, factory: Callable[..., nn.Module] | None = None) -> Any:
    """Register an observation decoder under ``name``, for ``model.encoder.decoder``.

    As ``register_encoder``, but the factory is called as ``factory(feat_dim,
    observation_space, **options)`` (options as there, without ``symlog_inputs``) and returns
    a ``torch.nn.Module`` whose forward maps features ``[..., feat_dim]`` to a dict with one
    distribution per observation key. Each distribution has ``log_prob(target) -> [...]`` and
    ``mode`` (``[..., *space.shape]``); image keys are scored against
    ``preprocess_image`` targets (floats in ``[-0.5, 0.5]``), vector keys against the
    float observations. The world model's reconstruction loss is the sum of the negative
    log-probabilities over the keys.

    Args:
        name: the name; not empty, without ``:``.
        factory: the class or function that builds the decoder; None to use as a decorator.

    Returns:
        ``factory``, or a decorator that registers and returns its argument.

    Raises:
        DreamerError: an invalid name, or a name another module registered.
    """
    return _register("decoder", name, factory, _caller_module())


def encoder_names() -> list[str]:
    """The encoder names registered in this process, sorted."""
    return sorted(_REGISTRY["encoder"])


def decoder_names() -> list[str]:
    """The decoder names registered in this process, sorted."""
    return sorted(_REGISTRY["decoder"])


def make_encoder(name: str, observation_space: gym.spaces.Dict, **options: Any) -> nn.Module:
    """Build the encoder registered as ``name`` (``module:name`` imports ``module`` first).

    Raises:
        DreamerError: the name is unknown or its module cannot be imported, or the factory
            returned something that is not an encoder (see ``register_encoder``).
    """
    entry = _lookup("encoder", name)
    encoder = entry.factory(observation_space, **options)
    dim = getattr(encoder, "embed_dim", None)
    if not isinstance(encoder, nn.Module) or isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) \
            or dim < 1:
        raise DreamerError(
            f"The encoder {name!r} ({_describe(entry)}) built a {type(encoder).__name__} with embed_dim={dim!r}: "
            "an encoder factory must return a torch.nn.Module with a positive int attribute embed_dim, the "
            "size of the embedding its forward returns (see dreamer_core.register_encoder)."
        )
    return encoder


def make_decoder(name: str, feat_dim: int, observation_space: gym.spaces.Dict, **options: Any) -> nn.Module:
    """Build the decoder registered as ``name`` (``module:name`` imports ``module`` first).

    Raises:
        DreamerError: the name is unknown or its module cannot be imported, or the factory
            returned no ``torch.nn.Module``.
    """
    entry = _lookup("decoder", name)
    decoder = entry.factory(feat_dim, observation_space, **options)
    if not isinstance(decoder, nn.Module):
        raise DreamerError(
            f"The decoder {name!r} ({_describe(entry)}) built a {type(decoder).__name__}: a decoder factory "
            "must return a torch.nn.Module (see dreamer_core.register_decoder)."
        )
    return decoder


def network_problems(encoder: str, decoder: str) -> list[str]:
    """What is wrong with an encoder and a decoder name (empty when both resolve); imports the
    modules that ``module:name`` names, as building the model would."""
    problems = []
    for kind, name in (("encoder", encoder), ("decoder", decoder)):
        try:
            _lookup(kind, name)
        except DreamerError as error:
            problems.append(str(error))
    return problems


def qualified_name(kind: str, name: str) -> str:
    """``name`` as a checkpoint stores it: ``module:name`` for a network registered by an
    importable module (or ``/path/to/file.py:name`` for one imported from a file), so that
    another process finds it. A file path in ``name`` becomes absolute (the stages may run
    elsewhere); built-in names, other names that say their module, and names registered by
    ``__main__`` stay as they are."""
    if ":" in name:
        module, _, short = name.rpartition(":")
        return f"{Path(module).expanduser().resolve()}:{short}" if _is_file(module) else name
    entry = _REGISTRY[kind].get(name)
    if entry is None or entry.module in ("", "__main__", __name__):
        return name
    where = _import_spec(entry.module)
    return f"{where}:{name}" if where else name


def _caller_module() -> str:
    """The module that called the function calling this one."""
    return str(sys._getframe(2).f_globals.get("__name__", ""))


def _register(kind: str, name: str, factory: Callable[..., nn.Module] | None, module: str) -> Any:
    if not isinstance(name, str) or not name.strip() or ":" in name or name != name.strip():
        raise DreamerError(
            f"{kind.capitalize()} names are non-empty strings without ':' or surrounding spaces (got {name!r}); "
            "':' separates a module from the name in 'module:name'."
        )

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise DreamerError(f"register_{kind}({name!r}, ...) needs a class or function that builds the "
                               f"{kind}, got {fn!r}.")
        found = _REGISTRY[kind].get(name)
        if found is not None and found.module != module:
            raise DreamerError(
                f"The {kind} name {name!r} is taken: {found.module} registered {_describe(found)}. Register "
                f"the one in {module or 'your module'} under another name."
            )
        _REGISTRY[kind][name] = _Entry(fn, module)
        return fn

    return add if factory is None else add(factory)


def _lookup(kind: str, spec: str) -> _Entry:
    """The entry ``spec`` names: ``name``, or ``module:name`` (the module is imported first; if
    that fails, a ``name`` registered by other means is used, else a DreamerError)."""
    table = _REGISTRY[kind]
    if not isinstance(spec, str) or not spec.strip():
        raise DreamerError(f"model.encoder.{'name' if kind == 'encoder' else 'decoder'} must name a registered "
                           f"{kind} (registered: {', '.join(sorted(table))}), got {spec!r}.")
    module, _, name = spec.strip().rpartition(":")
    if module:
        try:
            _import(module)
        except (ImportError, OSError) as error:
            if name not in table:
                raise DreamerError(
                    f"The {kind} {spec!r} names the module {module!r}, which cannot be imported ({error}). "
                    "Make it importable (install it, or put its folder on PYTHONPATH) or name the .py file "
                    f"that registers it ('path/to/file.py:{name}'); or import it yourself before the world "
                    "model is built."
                ) from error
    if name not in table:
        where = (f"the module {module!r} was imported but registers no {kind} {name!r}" if module else
                 f"no {kind} is registered as {name!r} in this process")
        raise DreamerError(
            f"Unknown {kind} {spec!r}: {where} (registered: {', '.join(sorted(table))}). Register yours with "
            f"dreamer_core.register_{kind}({name!r}, factory) in a module, and name it as 'module:{name}' "
            f"(or 'path/to/file.py:{name}') so that every stage imports that module first."
        )
    return table[name]


def _describe(entry: _Entry) -> str:
    fn = entry.factory
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _import(module: str) -> None:
    """Import a dotted module name, or a ``.py`` file under its stem (once per file)."""
    if _is_file(module):
        files.import_file(module)
    else:
        importlib.import_module(module)


def _import_spec(module_name: str) -> str | None:
    """How another process imports ``module_name``: its dotted name when the module was found
    on ``sys.path`` under that name, else the path of its file; None for neither."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return module_name if module is not None else None
    path = Path(file).resolve()
    depth = module_name.count(".") + (path.name == "__init__.py")
    root = path.parents[depth] if depth < len(path.parents) else None
    roots = {Path(p or os.getcwd()).resolve() for p in sys.path if isinstance(p, str)}
    return module_name if root in roots else str(path)


register_encoder(DEFAULT, MultiEncoder)
register_decoder(DEFAULT, MultiDecoder)
