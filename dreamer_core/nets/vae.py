"""The VAE of the original World Models (Ha & Schmidhuber 2018): V, the vision model.

Owns: ``PaperConvEncoder`` / ``PaperConvDecoder`` (the paper's networks for 64x64 frames),
``VAE`` (a Gaussian latent ``z`` of size Z for a whole ``gymnasium.spaces.Dict`` observation)
and ``kl_to_standard_normal`` with the free-bits floor of the paper's code.

The paper's networks (64x64xC frames, ReLU, no normalisation, "valid" padding)::

    encoder  4 convs, kernel 4, stride 2: 32, 64, 128, 256 channels   64 -> 31 -> 14 -> 6 -> 2
             flatten (2x2x256 = 1024) -> Linear to the mean and the log-variance of z
    decoder  Linear z -> 1024, as a 1x1 map -> transposed convs, stride 2, kernels 5, 5, 6, 6:
             128, 64, 32, C channels                                   1 -> 5 -> 13 -> 30 -> 64
             sigmoid: pixels in [0, 1]  (``output="sigmoid"``; the default ``linear`` drops it)

Why the default output is linear (as in DreamerV3's decoders), not the paper's sigmoid: with a
squared error on a sigmoid, a pixel that is exactly white (or black) in most frames is best
fitted by an infinite logit, so Adam keeps raising it until the sigmoid is exactly 1.0 in float32
and its gradient exactly 0; where a dark object later passes over that pixel, nothing can learn
it. Measured on CartPole-v1 frames (white background; 128 frames per update, lr 1e-4): the
sigmoid decoder's largest logit reached 83 after 80 updates and the summed squared error stayed
at 75.5 per frame from update 200 to 1150 (and at lr 1e-3 too; the mean frame alone scores 15),
while the linear output went below 20 within 250 updates at lr 1e-3.

Other observations reuse the toolkit's encoders (nets/encoders.py): vector keys go through
``MultiEncoder`` / ``MultiDecoder`` (symlog'd MLP in, symlog MSE out), and images that are
not 64x64 (or ``conv="toolkit"``) through its stride-2 CNN with the same 32-64-128-256
channels. All keys share one latent: the embeddings are concatenated before the Gaussian
head. Images are scored in the toolkit's [-0.5, 0.5] scale (``preprocess_image``), where the
sum of squared errors equals the paper's sum over [0, 1] pixels.

Imports: torch, gymnasium and nets.layers / nets.encoders / nets.distributions. Must not
import anything else from dreamer_core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import gymnasium as gym
import torch
from torch import nn

from dreamer_core.nets.distributions import MSEDist, SymlogMSEDist
from dreamer_core.nets.encoders import MultiDecoder, MultiEncoder, preprocess_image, split_keys
from dreamer_core.nets.layers import init_weights, make_act

__all__ = ["CONVS", "OUTPUTS", "VAE", "PaperConvDecoder", "PaperConvEncoder", "kl_to_standard_normal"]

CONVS = ("paper", "toolkit")
OUTPUTS = ("linear", "sigmoid")  # the paper decoder's last layer (module docstring)
PAPER_SIZE = 64
TOOLKIT_MULTS = (1, 2, 4, 8)  # depth 32: the paper's 32-64-128-256 channels


class PaperConvEncoder(nn.Module):
    """The paper's encoder CNN: four kernel-4 stride-2 convolutions without padding.

    Shapes:
        x: ``[N, C, 64, 64]`` float      returns: ``[N, 1024]`` (with ``depth=32``)
    """

    def __init__(self, in_channels: int, depth: int = 32, act: str = "relu"):
        super().__init__()
        channels = [depth * m for m in TOOLKIT_MULTS]
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, 4, 2), make_act(act)]
        self.net = nn.Sequential(*layers)
        self.out_dim = channels[-1] * 2 * 2  # 64 -> 31 -> 14 -> 6 -> 2
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # [N, out_dim]


class PaperConvDecoder(nn.Module):
    """The paper's decoder: Linear to a 1x1 map of 1024 (``depth * 32``) channels, then four
    stride-2 transposed convolutions with kernels 5, 5, 6, 6; returns logits (the paper's
    sigmoid is applied by the caller).

    Shapes:
        z: ``[N, Z]``      returns: ``[N, C, 64, 64]``
    """

    def __init__(self, latent: int, out_channels: int, depth: int = 32, act: str = "relu"):
        super().__init__()
        self.width = depth * 32
        self.linear = nn.Linear(latent, self.width)
        channels = [depth * 4, depth * 2, depth, out_channels]
        kernels = [5, 5, 6, 6]
        layers: list[nn.Module] = []
        for i, (c_in, c_out, k) in enumerate(zip([self.width, *channels[:-1]], channels, kernels)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, k, 2))
            if i < len(kernels) - 1:
                layers.append(make_act(act))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z)[..., None, None]  # [N, 1024, 1, 1]
        return self.net(x)  # [N, C, 64, 64]


def kl_to_standard_normal(mean: torch.Tensor, std: torch.Tensor, free_nats: float = 0.0) -> torch.Tensor:
    """``max(KL(N(mean, std^2) || N(0, 1)), free_nats)`` per element, summed over Z first.

    The paper's code floors each frame's KL at ``kl_tolerance * Z`` (0.5 * 32 = 16 nats):
    below the floor the KL has no gradient, so the latent may carry that much information for
    free.

    Shapes:
        mean, std: ``[..., Z]``      returns: ``[...]``
    """
    mean, std = mean.float(), std.float()
    kl = 0.5 * (mean**2 + std**2 - 1.0 - 2.0 * torch.log(std)).sum(-1)
    return kl.clamp(min=free_nats) if free_nats > 0 else kl


class VAE(nn.Module):
    """Gaussian VAE over a Dict observation (see the module docstring for the routing).

    Args:
        obs_space: Dict space (``split_keys``: uint8 ``[Hi, Wi, C]`` images, rank 0/1 vectors).
        latent: Z (the paper: 32).
        depth: channels of the first conv (32: 32-64-128-256).
        mlp_units: width of the vector MLPs.
        mlp_layers: depth of the vector MLPs.
        norm: norm of the hidden layers (the paper: none).
        act: activation of the hidden layers (the paper: ReLU).
        conv: ``paper`` (64x64 images through the paper's CNN) or ``toolkit`` (the toolkit's CNN).
        output: the paper CNN's pixels: ``linear`` (the default) or ``sigmoid`` (the paper's; see
            the module docstring for why it is not the default).

    Shapes:
        encode(obs key -> ``[..., *shape]``) -> mean, std ``[..., Z]``
        decode(z ``[..., Z]``) -> key -> distribution with batch shape ``[...]``
    """

    def __init__(self, obs_space: gym.spaces.Dict, latent: int = 32, depth: int = 32, mlp_units: int = 256,
                 mlp_layers: int = 2, norm: str = "none", act: str = "relu", conv: str = "paper",
                 output: str = "linear"):
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; choose one of {CONVS}")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of {OUTPUTS}")
        self.output = output
        self.obs_space, self.latent = obs_space, latent
        images, vectors = split_keys(obs_space)
        paper = conv == "paper" and bool(images) and all(
            tuple(obs_space[k].shape[:2]) == (PAPER_SIZE, PAPER_SIZE) for k in images)
        self.paper_keys = images if paper else []
        self.image_keys = images
        self.channels = [obs_space[k].shape[2] for k in self.paper_keys]
        embed = 0
        self.conv_in: PaperConvEncoder | None = None
        self.conv_out: PaperConvDecoder | None = None
        if self.paper_keys:
            self.conv_in = PaperConvEncoder(sum(self.channels), depth, act)
            self.conv_out = PaperConvDecoder(latent, sum(self.channels), depth, act)
            embed += self.conv_in.out_dim
        rest = [k for k in (*images, *vectors) if k not in self.paper_keys]
        self.rest_in: MultiEncoder | None = None
        self.rest_out: MultiDecoder | None = None
        if rest:
            sub = gym.spaces.Dict({k: obs_space[k] for k in rest})
            kwargs = dict(cnn_depth=depth, cnn_mults=TOOLKIT_MULTS, mlp_units=mlp_units, mlp_layers=mlp_layers,
                          norm=norm, act=act)
            self.rest_in = MultiEncoder(sub, symlog_inputs=True, **kwargs)
            self.rest_out = MultiDecoder(latent, sub, **kwargs)
            embed += self.rest_in.embed_dim
        self.embed_dim = embed
        self.stats = init_weights(nn.Linear(embed, 2 * latent))

    def encode(self, obs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``[..., Z]`` of ``q(z | obs)`` (the paper: ``std = exp(logvar / 2)``)."""
        some = next(iter(self.obs_space.spaces))
        lead = obs[some].shape[: obs[some].ndim - len(self.obs_space[some].shape)]
        parts = []
        if self.conv_in is not None:
            frames = [preprocess_image(obs[k]).reshape(-1, *obs[k].shape[-3:]) for k in self.paper_keys]
            x = torch.cat(frames, -1).permute(0, 3, 1, 2)  # [N, C, 64, 64]
            parts.append(self.conv_in(x))  # [N, 1024]
        if self.rest_in is not None:
            parts.append(self.rest_in({k: obs[k] for k in self.rest_in.obs_space.spaces}).reshape(lead.numel(), -1))
        mean, logvar = self.stats(torch.cat(parts, -1)).chunk(2, -1)  # [N, Z] each
        return mean.reshape(*lead, -1), torch.exp(0.5 * logvar).reshape(*lead, -1)

    def decode(self, z: torch.Tensor) -> dict[str, MSEDist | SymlogMSEDist]:
        """One distribution per key; ``.mode`` of an image is in the [-0.5, 0.5] scale."""
        assert z.shape[-1] == self.latent, (z.shape, self.latent)
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.latent)  # [N, Z]
        dists: dict[str, MSEDist | SymlogMSEDist] = {}
        if self.conv_out is not None:
            logits = self.conv_out(flat).permute(0, 2, 3, 1)  # [N, 64, 64, C]
            pixels = torch.sigmoid(logits) - 0.5 if self.output == "sigmoid" else logits  # the [-0.5, 0.5] scale
            for key, image in zip(self.paper_keys, pixels.split(self.channels, -1)):
                dists[key] = MSEDist(image.reshape(*lead, *image.shape[1:]), dims=3)
        if self.rest_out is not None:
            dists.update(self.rest_out(z))
        return dists

    @staticmethod
    def sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw ``mean + std * eps`` ``[..., Z]``."""
        return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

    @property
    def num_pixels(self) -> int:
        """Pixels (values) of all image keys of one observation (for per-pixel metrics)."""
        return sum(math.prod(self.obs_space[k].shape) for k in self.image_keys)
