"""Output distributions and the symlog / two-hot transforms of DreamerV3.

Owns: ``symlog``/``symexp`` (DreamerV3 Eq. 1), the two-hot encoding over symlog-spaced bins
(``symexp_bins``, ``two_hot``), the distribution objects heads and the RSSM return
(``TwoHotDist``, ``OneHotDist`` with unimix and straight-through samples, ``MSEDist``,
``SymlogMSEDist``, ``BernoulliDist``, ``MultiBernoulliDist``, ``BoundedNormal``, ``GaussianLatent``) and the closed-form
KL terms of the latents (``kl_categorical``, ``kl_gaussian``). Losses call
``dist.log_prob(target)`` and negate it; nothing here reduces over batch or time.

Every ``log_prob``/``entropy`` reduces only the event axes of the distribution and returns
the leading (batch) shape. Half-precision inputs (autocast) are upcast to float32 before any
softmax, log or square, so losses stay float32; float64 inputs stay float64 (gradcheck).

Imports: torch only. Must not import anything else from dreamer_core.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "BernoulliDist",
    "BoundedNormal",
    "GaussianLatent",
    "MSEDist",
    "MultiBernoulliDist",
    "OneHotDist",
    "SymlogMSEDist",
    "TwoHotDist",
    "kl_categorical",
    "kl_gaussian",
    "symexp",
    "symexp_bins",
    "symlog",
    "two_hot",
]


def _full(x: torch.Tensor) -> torch.Tensor:
    """Upcast float16/bfloat16 to float32; leave float32/float64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --- transforms --------------------------------------------------------------------------------


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)`` (DreamerV3 Eq. 1); elementwise, any shape.

    The derivative is ``1 / (1 + |x|)`` everywhere except at exactly 0, where autograd gives 0
    (the subgradient of ``sign``). Only targets and inputs pass through symlog, so this never
    matters for training.
    """
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * (exp(|x|) - 1)``, the exact inverse of :func:`symlog`; elementwise."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symexp_bins(
    num: int = 255, low: float = -20.0, high: float = 20.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bin positions evenly spaced in symlog space (DreamerV3: 255 bins over [-20, 20]).

    The bins live in symlog space: bin ``i`` stands for the value ``symexp(bins[i])``. For a
    symmetric range and an odd ``num`` the bins are built from one half and its mirror, so the
    centre bin is exactly 0 and ``bins[i] == -bins[-1 - i]`` bit for bit (a zero-initialised
    head then predicts exactly 0, see :attr:`TwoHotDist.mean`).

    Shapes:
        returns: ``[num]`` float32
    """
    if num < 2 or not low < high:
        raise ValueError(f"need num >= 2 and low < high, got num={num}, low={low}, high={high}")
    if num % 2 == 1 and low == -high:
        half = torch.linspace(0.0, high, (num + 1) // 2, device=device)  # [(num + 1) / 2]
        return torch.cat([-half.flip(0)[:-1], half])  # [num]
    return torch.linspace(low, high, num, device=device)  # [num]


def two_hot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot weights of ``x`` on sorted ``bins`` (both already in bin, i.e. symlog, space).

    The weight of each of the two nearest bins is linear in the distance to the other one, so
    the weights sum to 1 and ``sum(weights * bins) == x`` inside the range. Values outside the
    range are clipped, so they put weight 1 on the edge bin; an exact bin hit puts weight 1 on
    that bin. Targets are stop-gradient, so no gradient flows to ``x``.

    Shapes:
        x: ``[...]``      bins: ``[K]``      returns: ``[..., K]`` (dtype of ``x``)
    """
    below, above, weight_below, weight_above = _two_hot_parts(x, bins)
    K = bins.shape[0]
    onehot_below = F.one_hot(below, K).to(weight_below.dtype)  # [..., K]
    onehot_above = F.one_hot(above, K).to(weight_below.dtype)  # [..., K]
    return onehot_below * weight_below[..., None] + onehot_above * weight_above[..., None]


def _two_hot_parts(x: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The two bins of :func:`two_hot` and their weights: (below, above, w_below, w_above), ``[...]``."""
    x = _full(x).detach()
    bins = bins.to(x.dtype)
    K = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    below = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp(0, K - 1)  # [...]
    above = (below + 1).clamp(max=K - 1)  # [...]
    low, high = bins[below], bins[above]  # [...]
    span = high - low
    weight_above = torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1.0), 0.0)
    return below, above, 1.0 - weight_above, weight_above


# Below this many classes the fused softmax kernels of this CPU build spend more on per-row
# overhead than on the arithmetic (8 classes: about 5x slower than the elementwise form below).
_SMALL_K = 16


def softmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(x, -1)``; for few classes in the elementwise form (same maths; the shift
    by the detached row maximum cancels exactly in value and gradient)."""
    if x.shape[-1] > _SMALL_K:
        return torch.softmax(x, -1)
    e = (x - x.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.log_softmax(x, -1)``; for few classes in the elementwise form (see :func:`softmax`)."""
    if x.shape[-1] > _SMALL_K:
        return torch.log_softmax(x, -1)
    z = x - x.detach().amax(-1, keepdim=True)
    return z - z.exp().sum(-1, keepdim=True).log()


def _symmetric_dot(probs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """``(probs * bins).sum(-1)`` for bins symmetric around 0 (``bins[i] = -bins[K-1-i]``):
    mirrored probabilities are subtracted first, then one matrix-vector product with the upper
    half of the bins. Uniform probabilities give exactly 0; no ``[..., K]`` product is built.
    """
    K = probs.shape[-1]
    m = K // 2
    return (probs[..., K - m:] - probs[..., :m].flip(-1)) @ bins[K - m:]  # [...]; a middle bin is 0


def _mirrored(bins: torch.Tensor) -> bool:
    """True when ``bins[i] == -bins[K-1-i]`` bit for bit (and a middle bin is 0), as
    :func:`symexp_bins` builds them; only then is :func:`_symmetric_dot` the same sum."""
    K, m = bins.shape[0], bins.shape[0] // 2
    return bool(torch.equal(bins[:m].flip(0), -bins[K - m:])) and (K % 2 == 0 or bool(bins[m] == 0))


def _symmetric_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis, pairing element i with element K-1-i before adding.

    Mathematically a plain sum; numerically, products with mirrored bins cancel exactly, so
    uniform probabilities over symmetric bins give exactly 0.
    """
    K = values.shape[-1]
    m = K // 2
    pairs = values[..., :m].flip(-1) + values[..., K - m :]  # [..., m]
    return pairs.sum(-1) + values[..., m : K - m].sum(-1)  # [...]


# --- regression outputs ------------------------------------------------------------------------


class TwoHotDist:
    """Categorical over symlog-spaced bins, read as a real number (reward and critic heads).

    Args:
        logits: unnormalised scores over the bins.
        bins: bin positions in symlog space (see :func:`symexp_bins`).

    Shapes:
        logits: ``[..., K]``      bins: ``[K]``      mean, mode: ``[...]``
        log_prob(target ``[...]``) -> ``[...]``
    """

    def __init__(self, logits: torch.Tensor, bins: torch.Tensor):
        assert logits.shape[-1] == bins.shape[0], (logits.shape, bins.shape)
        self.logits = _full(logits)
        self.bins = bins.to(device=self.logits.device, dtype=self.logits.dtype)
        self._logp: torch.Tensor | None = None

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)  # [..., K]

    @property
    def mean(self) -> torch.Tensor:
        """``symexp(E[bin])``: the expected bin in symlog space, mapped back (the prediction)."""
        if _mirrored(self.bins):  # symexp_bins: the fast path
            return symexp(_symmetric_dot(self.probs, self.bins))  # [...]
        return symexp(_symmetric_sum(self.probs * self.bins))  # [...]

    @property
    def mode(self) -> torch.Tensor:
        """Same as :attr:`mean` (DreamerV3 uses the expected bin as its point prediction)."""
        return self.mean

    def log_prob(self, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the two-hot encoding of ``symlog(target)``, negated."""
        assert target.shape == self.logits.shape[:-1], (target.shape, self.logits.shape)
        # Equal to (two_hot(symlog(target)) * log_softmax(logits)).sum(-1): only two weights are
        # non-zero, so gather those two log-probabilities instead of building [..., K] weights.
        below, above, w_below, w_above = _two_hot_parts(symlog(_full(target)), self.bins)
        if self._logp is None:  # the critic scores two targets with one distribution: normalise once
            self._logp = torch.log_softmax(self.logits, -1)  # [..., K]
        logp = self._logp
        return (w_below * logp.gather(-1, below[..., None])[..., 0]
                + w_above * logp.gather(-1, above[..., None])[..., 0])  # [...]


class MSEDist:
    """Fixed-variance Gaussian scored by the negative sum of squared errors.

    Args:
        mode: the prediction.
        dims: number of trailing event axes summed in :meth:`log_prob` (3 for ``[H, W, C]``
            images, 1 for vectors, 0 for scalars).

    Shapes:
        mode: ``[..., *event]``      log_prob(target ``[..., *event]``) -> ``[...]``
    """

    def __init__(self, mode: torch.Tensor, dims: int):
        self.mode = _full(mode)
        self.mean = self.mode
        self.dims = dims

    def log_prob(self, target: torch.Tensor) -> torch.Tensor:
        assert target.shape == self.mode.shape, (target.shape, self.mode.shape)
        error = (self.mode - _full(target).to(self.mode.dtype)) ** 2
        return -error.sum(tuple(range(-self.dims, 0))) if self.dims else -error


class SymlogMSEDist:
    """Prediction in symlog space, scored against ``symlog(target)`` (vector decoder).

    Args:
        pred: prediction in symlog space.
        dims: number of trailing event axes summed in :meth:`log_prob`.

    Shapes:
        pred, mode: ``[..., *event]``      log_prob(target ``[..., *event]``) -> ``[...]``
    """

    def __init__(self, pred: torch.Tensor, dims: int):
        self.pred = _full(pred)
        self.dims = dims

    @property
    def mode(self) -> torch.Tensor:
        """The prediction in the target's own units: ``symexp(pred)``."""
        return symexp(self.pred)

    @property
    def mean(self) -> torch.Tensor:
        return self.mode

    def log_prob(self, target: torch.Tensor) -> torch.Tensor:
        assert target.shape == self.pred.shape, (target.shape, self.pred.shape)
        error = (self.pred - symlog(_full(target).to(self.pred.dtype))) ** 2
        return -error.sum(tuple(range(-self.dims, 0))) if self.dims else -error


class BernoulliDist:
    """Bernoulli from logits (continue head). Scalar events.

    Shapes:
        logits, mean, mode: ``[...]``      log_prob(target float ``[...]``) -> ``[...]``
    """

    def __init__(self, logits: torch.Tensor):
        self.logits = _full(logits)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mode(self) -> torch.Tensor:
        """1.0 where the probability exceeds 0.5, else 0.0 (float, no gradient)."""
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.rand(
            self.logits.shape,
            generator=generator,
            device=self.logits.device,
            dtype=self.logits.dtype,
        )
        return (noise < self.mean).to(self.logits.dtype)

    def log_prob(self, target: torch.Tensor) -> torch.Tensor:
        assert target.shape == self.logits.shape, (target.shape, self.logits.shape)
        target = target.to(self.logits.dtype)
        return -F.binary_cross_entropy_with_logits(self.logits, target, reduction="none")

    def entropy(self) -> torch.Tensor:
        p = self.mean
        return F.binary_cross_entropy_with_logits(self.logits, p, reduction="none")


class MultiBernoulliDist:
    """Independent Bernoullis over the last axis (multi-binary actions, e.g. console buttons).

    ``probs = (1 - unimix) * sigmoid(logits) + unimix / 2``; samples are straight-through
    (forward 0/1, gradient of ``probs``) like :class:`OneHotDist`.

    Shapes:
        logits, probs, sample(), mode: ``[..., A]``      log_prob, entropy: ``[...]`` (sum over A)
    """

    def __init__(self, logits: torch.Tensor, unimix: float = 0.0):
        assert 0.0 <= unimix < 1.0, unimix
        probs = torch.sigmoid(_full(logits))
        self.probs = (1.0 - unimix) * probs + unimix / 2 if unimix > 0.0 else probs  # [..., A]

    def _straight_through(self, bits: torch.Tensor) -> torch.Tensor:
        return bits + (self.probs - self.probs.detach())

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = self.probs.detach()
        noise = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        return self._straight_through((noise < probs).to(probs.dtype))

    @property
    def mode(self) -> torch.Tensor:
        return self._straight_through((self.probs.detach() > 0.5).to(self.probs.dtype))

    def log_prob(self, bits: torch.Tensor) -> torch.Tensor:
        assert bits.shape == self.probs.shape, (bits.shape, self.probs.shape)
        bits = bits.to(self.probs.dtype)
        p = self.probs.clamp(1e-6, 1 - 1e-6)
        return (bits * p.log() + (1 - bits) * (1 - p).log()).sum(-1)

    def entropy(self) -> torch.Tensor:
        p = self.probs.clamp(1e-6, 1 - 1e-6)
        return -(p * p.log() + (1 - p) * (1 - p).log()).sum(-1)


# --- categorical latents and discrete actions --------------------------------------------------


class OneHotDist:
    """Categorical with one-hot samples, uniform mixing and straight-through gradients.

    ``probs = (1 - unimix) * softmax(logits) + unimix / K`` (DreamerV3: 1% unimix on latents
    and the policy), so every class keeps probability >= ``unimix / K`` and KL terms stay
    bounded. :meth:`sample` and :attr:`mode` return a one-hot forward value whose gradient is
    the gradient of :attr:`probs` (straight-through estimator, DreamerV2 Alg. 1).

    The last axis holds the classes; all leading axes are batch: ``[..., S, K]`` for latents
    (``log_prob``/``entropy`` then return ``[..., S]``: sum over S yourself) and ``[..., A]``
    for discrete actions.

    Args:
        logits: unnormalised scores (or log-probabilities).
        unimix: uniform mixing weight in [0, 1).

    Shapes:
        logits, probs, sample(), mode: ``[..., K]``      log_prob, entropy: ``[...]``
    """

    def __init__(self, logits: torch.Tensor, unimix: float = 0.0):
        assert 0.0 <= unimix < 1.0, unimix
        logits = _full(logits)
        probs = softmax(logits)
        if unimix > 0.0:
            probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
        self.probs = probs  # [..., K]
        self.unimix = unimix
        self._logits: torch.Tensor | None = None if unimix > 0.0 else log_softmax(logits)

    @property
    def logits(self) -> torch.Tensor:
        """Log of the mixed probabilities (normalised): what KL terms and states store."""
        if self._logits is None:
            self._logits = torch.log(self.probs)
        return self._logits

    def _straight_through(self, onehot: torch.Tensor) -> torch.Tensor:
        # (probs - sg(probs)) is exactly 0 forward, so the value stays exactly one-hot. Without
        # a gradient to pass (imagination for REINFORCE, acting) the two extra passes are skipped.
        if not self.probs.requires_grad:
            return onehot
        return onehot + (self.probs - self.probs.detach())

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One-hot sample by inverse CDF (one uniform per distribution), straight-through."""
        return self.sample_with_index(generator)[0]

    def sample_with_index(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample` and the drawn classes ``[...]`` (where the sample's ones are)."""
        probs = self.probs.detach()
        noise = torch.rand(
            (*probs.shape[:-1], 1), generator=generator, device=probs.device, dtype=probs.dtype
        )
        # The number of classes whose cumulative probability is below the noise. The cumulative
        # sums are sorted, so with many classes a binary search per row finds it faster than a
        # [..., K] comparison summed; with few the comparison is faster (RESULTS.md, update-speed).
        cdf = probs.cumsum(-1)  # [..., K]
        if probs.shape[-1] >= _DRAW_SEARCH_CLASSES:
            index = torch.searchsorted(cdf, noise).squeeze(-1)  # [...]
        else:
            index = (cdf < noise).sum(-1)  # [...]
        index = index.clamp(max=probs.shape[-1] - 1)
        return self._straight_through(_one_hot(index, probs)), index

    @property
    def mode(self) -> torch.Tensor:
        """One-hot argmax, straight-through."""
        return self.mode_with_index()[0]

    def mode_with_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`mode` and its classes ``[...]``."""
        index = self.probs.detach().argmax(-1)  # [...]
        return self._straight_through(_one_hot(index, self.probs)), index

    def log_prob(self, onehot: torch.Tensor) -> torch.Tensor:
        assert onehot.shape == self.probs.shape, (onehot.shape, self.probs.shape)
        return (onehot.to(self.probs.dtype) * self.logits).sum(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.logits).sum(-1)


# From this many classes on, draws search the cumulative probabilities (OneHotDist.sample).
_DRAW_SEARCH_CLASSES = 32


def _one_hot(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot of ``index [...]`` shaped and typed like ``like [..., K]`` (written in place: no
    integer one-hot to convert)."""
    return torch.zeros_like(like).scatter_(-1, index[..., None], 1.0)


def kl_categorical(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
    """``KL(lhs || rhs)`` of S independent categoricals, summed over S.

    Pass the latent states' ``logits`` (log of the unimixed probabilities); they are
    re-normalised here, so raw scores work too. For DreamerV3's KL balancing call it twice:
    ``dyn = kl(post.detach(), prior)`` and ``rep = kl(post, prior.detach())``.

    Shapes:
        lhs_logits, rhs_logits: ``[..., S, K]``      returns: ``[...]``
    """
    assert lhs_logits.shape == rhs_logits.shape, (lhs_logits.shape, rhs_logits.shape)
    lhs = log_softmax(_full(lhs_logits))
    rhs = log_softmax(_full(rhs_logits))
    return (lhs.exp() * (lhs - rhs)).sum((-2, -1))  # [...]


# --- Gaussian latents and continuous actions ---------------------------------------------------


class GaussianLatent:
    """Diagonal Gaussian over S latent dims (DreamerV1 RSSM), reparameterised samples.

    Use :meth:`from_raw` to turn a network output into ``mean, std = raw.chunk(2)``,
    ``std = softplus(std) + min_std`` (DreamerV1).

    Shapes:
        mean, std, sample(), mode: ``[..., S]``      log_prob, entropy: ``[...]``
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        assert mean.shape == std.shape, (mean.shape, std.shape)
        self.mean = _full(mean)
        self.std = _full(std)

    @classmethod
    def from_raw(cls, raw: torch.Tensor, min_std: float = 0.1) -> GaussianLatent:
        """``raw [..., 2S]`` -> mean ``[..., S]`` and ``softplus(.) + min_std`` ``[..., S]``."""
        mean, std = _full(raw).chunk(2, -1)
        return cls(mean, F.softplus(std) + min_std)

    @property
    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (_full(x) - self.mean) / self.std
        return (-0.5 * z**2 - torch.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + torch.log(self.std)).sum(-1)


def kl_gaussian(
    lhs_mean: torch.Tensor, lhs_std: torch.Tensor, rhs_mean: torch.Tensor, rhs_std: torch.Tensor
) -> torch.Tensor:
    """``KL(N(lhs) || N(rhs))`` of diagonal Gaussians, summed over the last axis.

    Shapes:
        all inputs: ``[..., S]``      returns: ``[...]``
    """
    lhs_mean, lhs_std, rhs_mean, rhs_std = map(_full, (lhs_mean, lhs_std, rhs_mean, rhs_std))
    var_ratio = (lhs_std / rhs_std) ** 2
    mean_term = ((lhs_mean - rhs_mean) / rhs_std) ** 2
    return 0.5 * (var_ratio + mean_term - 1.0 - torch.log(var_ratio)).sum(-1)


class BoundedNormal:
    """Normal policy for actions in [-1, 1] (DreamerV3 continuous actor).

    The parameters come from :meth:`from_raw`: ``mean = tanh(raw_mean)`` and
    ``std = (max_std - min_std) * sigmoid(raw_std + 2) + min_std`` with ``std in [0.1, 1]``
    (DreamerV3 code). The density is an ordinary (unsquashed) Normal: :meth:`log_prob` and
    :meth:`entropy` are those of ``Normal(mean, std)`` summed over A. :meth:`rsample` draws a
    reparameterised sample and clips it to ``[low, high]`` with a straight-through gradient
    (forward: clipped; backward: as if unclipped), so executed actions are always in bounds
    while dynamics backprop still sees a smooth path.

    Shapes:
        mean, std, rsample(), mode: ``[..., A]``      log_prob, entropy: ``[...]``
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, low: float = -1.0, high: float = 1.0):
        assert mean.shape == std.shape, (mean.shape, std.shape)
        self.mean = _full(mean)
        self.std = _full(std)
        self.low, self.high = low, high

    @classmethod
    def from_raw(
        cls,
        raw_mean: torch.Tensor,
        raw_std: torch.Tensor,
        min_std: float = 0.1,
        max_std: float = 1.0,
    ) -> BoundedNormal:
        """Squash network outputs into ``mean in (-1, 1)`` and ``std in (min_std, max_std)``."""
        std = (max_std - min_std) * torch.sigmoid(_full(raw_std) + 2.0) + min_std
        return cls(torch.tanh(_full(raw_mean)), std)

    @property
    def mode(self) -> torch.Tensor:
        return self.mean

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        x = self.mean + self.std * noise
        return x.detach().clamp(self.low, self.high) + (x - x.detach())  # exact clip forward

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.rsample(generator).detach()

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        assert action.shape == self.mean.shape, (action.shape, self.mean.shape)
        return GaussianLatent(self.mean, self.std).log_prob(action)

    def entropy(self) -> torch.Tensor:
        return GaussianLatent(self.mean, self.std).entropy()
