"""Observation encoder and decoder over a ``gymnasium.spaces.Dict`` of image and vector keys.

Owns: the key split (``split_keys``: uint8 ``[Hi, Wi, C]`` Boxes are images, float Boxes of
rank 0 or 1 are vectors), the one image scaling used on both sides (``preprocess_image``:
uint8 ``[0, 255]`` -> float ``[-0.5, 0.5]``), the stride-2 CNN and its transposed mirror
(``ConvEncoder``, ``ConvDecoder``), and ``MultiEncoder`` / ``MultiDecoder`` which route every
key (images concatenated on channels into one CNN; vectors symlog'd and concatenated into one
MLP) and return an embedding or one distribution per key.

All leading axes are batch axes: ``[B, T, ...]`` inputs are flattened to ``[B*T, ...]``, run
through the networks in one call, and unflattened (never a loop over time).

Imports: torch, gymnasium, and nets.layers / nets.distributions. Must not import anything
else from dreamer_core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from dreamer_core.nets.distributions import MSEDist, SymlogMSEDist, symlog
from dreamer_core.nets.layers import MLP, ChannelNorm, init_weights, make_act

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "MultiDecoder",
    "MultiEncoder",
    "preprocess_image",
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
    """Mirror of :class:`ConvEncoder`: Linear to the smallest feature map, transposed convs up.

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

    Image keys (uint8) are scaled by :func:`preprocess_image`, concatenated on channels and
    run through one :class:`ConvEncoder`; vector keys are flattened, concatenated, symlog'd
    (if ``symlog_inputs``) and run through one :class:`MLP`. The embedding is the
    concatenation ``[cnn_out, mlp_out]``.

    Args:
        obs_space: Dict space; see :func:`split_keys` for how keys are routed.
        cnn_depth, cnn_mults: stage i has ``cnn_depth * cnn_mults[i]`` channels.
        mlp_units, mlp_layers: vector MLP width and depth (0 layers: symlog'd vector as is).
        norm, act: as in :class:`MLP`.
        symlog_inputs: apply :func:`symlog` to vector inputs (DreamerV3).
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

    Images: one :class:`ConvDecoder` predicts all image keys stacked on channels; each key
    gets an :class:`MSEDist` over ``[Hi, Wi, C]`` in :func:`preprocess_image` scale. Vectors:
    one :class:`MLP` trunk, a Linear output per key, a :class:`SymlogMSEDist` per key.

    Args:
        feat_dim: input feature size F.
        obs_space: the same Dict space the encoder was built with.
        other arguments: as in :class:`MultiEncoder`.

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
