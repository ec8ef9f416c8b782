"""Building blocks shared by the encoders, the RSSM and the heads.

Owns: norm and activation factories (``make_norm``, ``make_act``, ``ChannelNorm`` for NCHW
feature maps), the ``MLP`` (Linear -> Norm -> Act blocks, DreamerV3 style), DreamerV3's weight
initialisation of every network (``init_weights``: truncated normal with fan-average scaling,
zero biases, an output scale: 0 for the reward and critic outputs), ``BlockLinear``
(block-diagonal linear map) and the two GRU cells of the RSSM: ``NormGRUCell`` (DreamerV3
2023: one Linear over ``[x, deter]`` with LayerNorm on the gates, update bias -1) and
``BlockGRUCell`` (DreamerV3 2025: block-diagonal recurrent weights).

Imports: torch only. Must not import anything from dreamer_core.
"""

from __future__ import annotations

import math
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "BlockGRUCell",
    "BlockLinear",
    "ChannelNorm",
    "NormGRUCell",
    "OneHotAwareLinear",
    "fans",
    "gru_update",
    "init_std",
    "init_weights",
    "make_act",
    "make_norm",
    "remember_onehot",
    "zero_init",
]

NORMS = ("layer", "rms", "none")
ACTS = ("silu", "elu", "relu", "gelu", "tanh", "none")


def make_norm(kind: str, dim: int) -> nn.Module:
    """Normalisation over the last axis: ``layer`` (eps 1e-3, as DreamerV3), ``rms``, ``none``."""
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-3)
    if kind == "rms":
        return nn.RMSNorm(dim, eps=1e-4)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def make_act(name: str) -> nn.Module:
    """Activation module by name (one of ``ACTS``)."""
    table = {
        "silu": nn.SiLU,
        "elu": nn.ELU,
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "tanh": nn.Tanh,
        "none": nn.Identity,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTS}")
    return table[name]()


class ChannelNorm(nn.Module):
    """Normalise an NCHW feature map over its channels only (DreamerV3's conv norm).

    Shapes:
        x, returns: ``[N, C, Hi, Wi]``
    """

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.norm = make_norm(kind, channels)
        self.identity = kind == "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [N, C, Hi, Wi]


class _OneHotMatmul(torch.autograd.Function):
    """``x @ W.T`` for ``x`` made of one-hot groups, computed as a gather-sum in the forward pass.

    Forward cost is R x S x O additions instead of R x S*K x O multiply-adds (K = 32 classes:
    the categorical part of an RSSM feature is 80% of its width). ``flat`` and ``value`` say
    where each group's one is (:func:`_onehot_indices`). The input's gradient is the ordinary
    dense one, so straight-through gradients reach ``x`` exactly as with nn.Linear. The weight's
    gradient ``grad.T @ x`` has only R x S non-zero terms per output: on the CPU it is a sparse
    product (:func:`_onehot_weight_grad`; the same sums in another order, so equal to the dense
    product up to float32 rounding), elsewhere the dense one.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, flat: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight, flat, value)  # x: the one-hot block [..., S*K], as it came
        return F.embedding_bag(flat, weight.detach().t().contiguous(), per_sample_weights=value.to(weight.dtype),
                               mode="sum")  # [R, O]

    @staticmethod
    def backward(ctx, grad):
        x, weight, flat, value = ctx.saved_tensors  # x: [..., S*K]; flat, value: [R, S]
        grad_x = (grad @ weight.to(grad.dtype)).reshape(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            if grad.device.type == "cpu" and sparse_onehot_grad:
                grad_w = _onehot_weight_grad(grad, flat, value, x.shape[-1])
            else:
                grad_w = grad.t() @ x.reshape(-1, x.shape[-1]).to(grad.dtype)  # [O, S*K]
        return grad_x, grad_w, None, None


# The one-hot weight gradient as a sparse product on the CPU (False: the dense product, e.g. to
# compare the two; benchmarks/update_identity.py).
sparse_onehot_grad = True


def _onehot_weight_grad(grad: torch.Tensor, flat: torch.Tensor, value: torch.Tensor, width: int) -> torch.Tensor:
    """``grad.T @ x`` ``[O, S*K]`` for a one-hot block ``x`` given by ``flat``/``value`` ``[R, S]``:
    column c sums the rows of ``grad`` whose groups pick c. The picks, sorted by column (a stable
    sort, so deterministic), form a sparse ``[S*K, R]`` matrix in CSR layout; its product with
    ``grad`` ``[R, O]`` costs R x S x O multiply-adds instead of R x S*K x O (1024 x 256 outputs:
    1.4 ms against 5.5 here)."""
    R, S = flat.shape
    picks = flat.reshape(-1).to(torch.int32)  # [R*S]
    columns, order = torch.sort(picks, stable=True)
    rows = torch.div(order, S, rounding_mode="floor").to(torch.int32)  # the grad row of each pick
    crow = torch.zeros(width + 1, dtype=torch.int32, device=grad.device)
    crow[1:] = torch.bincount(picks, minlength=width).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        picked = torch.sparse_csr_tensor(crow, rows, value.reshape(-1)[order].to(grad.dtype), size=(width, R))
        return (picked @ grad).t()  # [O, S*K]


# The last input's one-hot positions, per thread: the reward and continue heads read the same
# imagined features, and so do the critic and the slow critic, so each pair finds its groups
# once; the RSSM's sampled states leave their known classes here (:func:`remember_onehot`), so
# no search runs at all. The entry holds its input alive, so a hit (same memory, shape, strides
# and version counter) is the same data: an in-place write bumps the version and misses.
_last_indices = threading.local()  # .entry = (key, input kept alive, (flat, value) or the classes)


def _cache_key(x: torch.Tensor, start: int, groups: int, classes: int) -> tuple:
    return (x.data_ptr(), x.shape, x.stride(), x.dtype, x.device, x._version, start, groups, classes)


def _onehot_indices(x: torch.Tensor, start: int, groups: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``W.T`` ``[R, S]`` picked by the one-hot groups in ``x[..., start:start+S*K]``,
    and the picked entries' values ``[R, S]`` (1, or 0 for an all-zero group)."""
    cacheable = not x.is_inference()
    key = _cache_key(x, start, groups, classes) if cacheable else None
    entry = getattr(_last_indices, "entry", None)
    hit = cacheable and entry is not None and entry[0] == key
    if hit and not isinstance(entry[2], torch.Tensor):
        return entry[2]
    if hit:  # the classes left by remember_onehot: every group holds a 1
        index = entry[2]  # [..., S]
        value = torch.ones(index.numel() // groups, groups, dtype=x.dtype, device=x.device)  # [R, S]
    else:
        x3 = x.detach()[..., start:start + groups * classes].unflatten(-1, (groups, classes))  # [..., S, K]
        index = _onehot_positions(x3)  # [..., S]
        value = x3.gather(-1, index[..., None]).squeeze(-1).reshape(-1, groups)  # [R, S]
    flat = (index + torch.arange(groups, device=x.device) * classes).reshape(-1, groups)  # [R, S]
    if cacheable:
        _last_indices.entry = (key, x, (flat, value))
    return flat, value


def remember_onehot(x: torch.Tensor, start: int, index: torch.Tensor, classes: int) -> None:
    """Tell the gather-sum layers where the ones of ``x``'s one-hot block are, when its maker
    knows them (the RSSM's sampled states carry their classes): the next
    :class:`OneHotAwareLinear` that reads ``x`` (or a detached alias of it) with ``onehot =
    (start, S, classes)`` skips the search. ``index`` ``[..., S]`` holds the class of each group
    of ``x[..., start:start + S*classes]``, and that entry must be exactly 1 (the others 0)."""
    groups = index.shape[-1]
    rows = index.numel() // groups
    if x.is_inference() or classes < OneHotAwareLinear.min_classes or rows < OneHotAwareLinear.min_rows:
        return  # no layer would take the gather path: keep nothing alive (a few MB, for the tiny size)
    # The rows of W.T are worked out only if a layer asks (_onehot_indices).
    _last_indices.entry = (_cache_key(x, start, groups, classes), x, index)


# Elements of the one-hot block searched at a time: the product below and its sum then stay in
# the CPU's cache; over a whole [1024, 16, 32, 32] input at once the temporary alone is 64 MiB.
_SEARCH_CHUNK = 1 << 20


def _onehot_positions(x3: torch.Tensor) -> torch.Tensor:
    """Where the one of each group of ``x3`` ``[..., S, K]`` is (0 for an all-zero group): the
    groups' products with 0..K-1, exact for the exact one-hot values this layer is for, and the
    same as ``argmax``, which is several times slower here over a last dimension of 32
    (benchmarks/RESULTS.md, update-speed)."""
    weights = torch.arange(x3.shape[-1], dtype=x3.dtype, device=x3.device)
    out = torch.empty(x3.shape[:-1], dtype=x3.dtype, device=x3.device)
    step = max(1, _SEARCH_CHUNK // max(1, x3[0].numel()))  # along the first dimension
    for i in range(0, x3.shape[0], step):
        torch.sum(x3[i:i + step] * weights, -1, out=out[i:i + step])
    return out.long()


class OneHotAwareLinear(nn.Linear):
    """An nn.Linear whose input holds a block of one-hot groups (the RSSM's categorical latents).

    ``onehot = (start, groups, classes)`` says that input columns ``[start, start + groups *
    classes)`` are ``groups`` one-hot vectors of ``classes`` entries each (all-zero groups are
    allowed: the RSSM's zero initial state). That block is multiplied by a gather-sum
    (:class:`_OneHotMatmul`), the rest by an ordinary matmul. The result and all gradients
    equal nn.Linear's for such inputs; for other inputs the result is wrong, so only layers fed
    by ``RSSMState.feat()`` (or ``[stoch, action]``) of categorical latents use it. With
    ``onehot=None`` it is a plain nn.Linear. Parameters and state-dict keys are nn.Linear's.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 onehot: tuple[int, int, int] | None = None):
        super().__init__(in_features, out_features, bias)
        if onehot is not None:
            start, groups, classes = onehot
            assert 0 <= start and start + groups * classes <= in_features, (onehot, in_features)
        self.onehot = onehot

    # Below this many rows the gather's fixed costs (the search, a transposed weight copy) exceed
    # the saved multiply-adds: the RSSM's per-step input layer in training sees only B rows.
    min_rows = 256
    # With few classes per group the block is narrow and the search over it costs more than the
    # multiply-adds it saves (the `tiny` size's 8 x 8 latents: measured in bench_online.py).
    min_classes = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onehot is None or self.onehot[2] < self.min_classes or x.numel() // x.shape[-1] < self.min_rows:
            # A sliced (non-contiguous) 3-d input would take a batched-matmul path several times
            # slower than one matmul over its rows (the heads on imagined states h >= 1).
            return super().forward(x if x.is_contiguous() else x.contiguous())
        start, groups, classes = self.onehot
        end = start + groups * classes
        lead = x.shape[:-1]
        # Only the dense columns are gathered into a matrix here (a sliced, non-contiguous x is
        # not copied whole); the one-hot block is reshaped in the backward pass if it needs it.
        index, value = _onehot_indices(x, start, groups, classes)
        out = _OneHotMatmul.apply(x[..., start:end], self.weight[:, start:end], index, value)  # [R, O]
        if start > 0:
            out = out + x[..., :start].reshape(-1, start) @ self.weight[:, :start].t()
        if end < self.in_features:
            out = out + x[..., end:].reshape(-1, self.in_features - end) @ self.weight[:, end:].t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)


class _PaddedAddmm(torch.autograd.Function):
    """``x @ W.T + b`` with ``W`` padded by zero rows to ``padded`` outputs for the forward
    matmul only; the backward pass is nn.Linear's own (same formulas, unpadded)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padded: int) -> torch.Tensor:
        extra = padded - weight.shape[0]
        out = torch.addmm(F.pad(bias, (0, extra)), x, F.pad(weight, (0, 0, 0, extra)).t())  # [R, padded]
        ctx.save_for_backward(x, weight)
        return out[:, : weight.shape[0]]

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        grad_w = x.t().mm(grad).t() if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class PaddedLinear(nn.Linear):
    """An nn.Linear whose forward matmul pads its outputs to a multiple of 16 (e.g. the 255 bins
    of a two-hot head): this CPU's matmul kernels run an output width of 255 at well under half
    the speed of 256 (benchmarks/RESULTS.md, update-speed-history). Values and gradients are bit-identical
    to nn.Linear's (the padded columns are dropped; the backward pass is nn.Linear's); so are
    its parameters and state-dict keys. Small or non-contiguous inputs (nn.Linear takes another
    kernel path for those), autocast and mixed dtypes take the plain path.
    """

    min_rows = 256
    # Narrow outputs (a continue logit, an action) take other kernels (matrix-vector) whose
    # results a padded matmul would not reproduce bit for bit; they gain nothing anyway.
    min_padded = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_features
        rows = x.numel() // max(x.shape[-1], 1)
        if (out % 16 == 0 or out < self.min_padded or self.bias is None or rows < self.min_rows or x.dtype != self.weight.dtype
                or not x.is_contiguous() or torch.is_autocast_enabled(x.device.type)):
            return super().forward(x)
        padded = -(-out // 16) * 16
        y = _PaddedAddmm.apply(x.reshape(-1, self.in_features), self.weight, self.bias, padded)
        return y.reshape(*x.shape[:-1], out)


class MLP(nn.Module):
    """``layers`` blocks of Linear -> Norm -> Act, then an optional output Linear.

    The hidden Linears have no bias when a norm follows (the norm's shift replaces it). With
    ``layers=0`` and ``out_dim=None`` the MLP is the identity.

    Args:
        in_dim: input features.
        out_dim: size of the final plain Linear, or None to end on the last hidden block.
        units: hidden width.
        layers: number of hidden blocks.
        norm: ``layer`` | ``rms`` | ``none``.
        act: activation name (see ``make_act``).
        onehot: ``(start, groups, classes)`` when the input holds one-hot groups there (see
            :class:`OneHotAwareLinear`; a faster first layer for RSSM features).
        outscale: variance scale of the output Linear's init (:func:`init_weights`; 0: the
            MLP outputs exactly 0 at first). Needs an output Linear unless 1.

    Shapes:
        x: ``[..., in_dim]``      returns: ``[..., out_dim or units]``
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        units: int = 512,
        layers: int = 2,
        norm: str = "layer",
        act: str = "silu",
        onehot: tuple[int, int, int] | None = None,
        outscale: float = 1.0,
    ):
        super().__init__()
        if out_dim is None and outscale != 1.0:
            raise ValueError("outscale needs an output layer (out_dim)")
        blocks: list[nn.Module] = []
        dim = in_dim
        for i in range(layers):
            blocks += [
                OneHotAwareLinear(dim, units, norm == "none", onehot) if i == 0 and onehot else
                nn.Linear(dim, units, bias=norm == "none"),
                make_norm(norm, units),
                make_act(act),
            ]
            dim = units
        if out_dim is not None:
            blocks.append(OneHotAwareLinear(dim, out_dim, True, onehot) if layers == 0 and onehot else
                          PaddedLinear(dim, out_dim))
            dim = out_dim
        self.net = nn.Sequential(*blocks)
        self.in_dim, self.out_dim = in_dim, dim
        init_weights(self, outscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_dim, (x.shape, self.in_dim)
        return self.net(x)


class BlockLinear(nn.Module):
    """Block-diagonal linear map: G independent ``in/G -> out/G`` maps on consecutive slices.

    Shapes:
        x: ``[..., in_features]``      returns: ``[..., out_features]``
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True):
        super().__init__()
        if in_features % blocks or out_features % blocks:
            raise ValueError(
                f"features {in_features}->{out_features} not divisible by {blocks} blocks"
            )
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        self.weight = nn.Parameter(
            torch.empty(blocks, in_features // blocks, out_features // blocks)
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.blocks, self.in_features // self.blocks).transpose(0, 1)  # [G, M, i]
        y = torch.bmm(x, self.weight.to(x.dtype)).transpose(0, 1)  # [M, G, o]
        y = y.reshape(*lead, self.out_features)  # [..., out]
        return y if self.bias is None else y + self.bias.to(y.dtype)


def gru_update(gates: torch.Tensor, deter: torch.Tensor, update_bias: float = -1.0) -> torch.Tensor:
    """DreamerV3's GRU state update from pre-activation gates ``[reset, cand, update]``.

    ``reset = sigmoid(r)``, ``cand = tanh(reset * c)``, ``update = sigmoid(u + update_bias)``
    (bias -1 makes the cell keep its state early in training), ``deter' = update * cand +
    (1 - update) * deter``.

    Shapes:
        gates: ``[..., 3, D]`` (the three gates stacked)      deter, returns: ``[..., D]``
    """
    reset, cand, update = gates.unbind(-2)  # 3 x [..., D]
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update + update_bias)
    return update * cand + (1.0 - update) * deter


class NormGRUCell(nn.Module):
    """DreamerV3 (2023) GRU: ``gates = Norm(W [x, deter])``, then :func:`gru_update`.

    Shapes:
        x: ``[..., in_dim]``      deter, returns: ``[..., D]``
    """

    def __init__(self, in_dim: int, deter: int, norm: str = "layer", update_bias: float = -1.0):
        super().__init__()
        self.linear = nn.Linear(in_dim + deter, 3 * deter, bias=norm == "none")
        self.norm = make_norm(norm, 3 * deter)
        self.deter, self.update_bias = deter, update_bias
        init_weights(self)

    def forward(self, x: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        gates = self.norm(self.linear(torch.cat([x, deter], -1)))  # [..., 3D]
        gates = gates.unflatten(-1, (3, self.deter))  # [..., 3, D]
        return gru_update(gates, deter, self.update_bias)


class BlockGRUCell(nn.Module):
    """DreamerV3 (2025) block GRU: G groups of D/G state units with block-diagonal weights.

    Each group sees its own slice of ``deter`` and the whole (shared) input ``x``. In the
    reference code the input is copied to every group and concatenated with the group's state
    before a block-diagonal Linear; here the same map is computed without the copy as
    ``BlockLinear(deter) + Linear(x)``. ``layers`` hidden blocks (Norm over all D, Act) precede
    the block-diagonal gate layer, which has no norm. Gates are laid out per group, so the
    recurrence never mixes groups; mixing comes from the input ``x`` (which in the RSSM includes
    a projection of the full ``deter``).

    Shapes:
        x: ``[..., in_dim]``      deter, returns: ``[..., D]``
    """

    def __init__(
        self,
        in_dim: int,
        deter: int,
        blocks: int,
        layers: int = 1,
        norm: str = "layer",
        act: str = "silu",
        update_bias: float = -1.0,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError("BlockGRUCell needs at least one hidden layer")
        bias = norm == "none"
        self.deter_in = BlockLinear(deter, deter, blocks, bias=False)
        self.x_in = nn.Linear(in_dim, deter, bias=bias)
        hidden: list[nn.Module] = [make_norm(norm, deter), make_act(act)]
        for _ in range(layers - 1):
            hidden += [
                BlockLinear(deter, deter, blocks, bias=bias),
                make_norm(norm, deter),
                make_act(act),
            ]
        self.hidden = nn.Sequential(*hidden)
        self.gates = BlockLinear(deter, 3 * deter, blocks)
        self.deter, self.blocks, self.update_bias = deter, blocks, update_bias
        init_weights(self.x_in)  # the BlockLinears initialise themselves

    def forward(self, x: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        h = self.hidden(self.deter_in(deter) + self.x_in(x))  # [..., D]
        group = self.deter // self.blocks
        gates = self.gates(h).unflatten(-1, (self.blocks, 3, group))  # [..., G, 3, D/G]
        gates = gates.transpose(-3, -2).flatten(-2)  # [..., 3, D] (group-major inside each gate)
        return gru_update(gates, deter, self.update_bias)


# --- initialisation ----------------------------------------------------------------------------

INIT_STD_TRUNC = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def fans(layer: nn.Module) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear, Conv2d, ConvTranspose2d or BlockLinear weight.

    Convolutions count their receptive field (``in * k * k``, ``out * k * k``); a BlockLinear
    counts one block (``in / G``, ``out / G``: each output sees only its block's inputs).
    """
    weight = layer.weight
    if isinstance(layer, BlockLinear):
        return weight.shape[1], weight.shape[2]
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    if isinstance(layer, nn.ConvTranspose2d):  # weight [in, out, k, k]
        fan_in, fan_out = fan_out, fan_in
    return fan_in, fan_out


def init_std(fan_in: int, fan_out: int, scale: float = 1.0) -> float:
    """Std of the normal that :func:`init_weights` truncates at 2 std (before truncation).

    ``sqrt(scale / fan_avg) / 0.8796``: truncation shrinks the std by 0.8796, so the weights
    end up with the variance ``scale / fan_avg`` of a fan-average (Glorot) normal.
    """
    return math.sqrt(scale / ((fan_in + fan_out) / 2)) / INIT_STD_TRUNC


def trunc_normal_fan_avg_(
    weight: torch.Tensor, fan_in: int, fan_out: int, scale: float = 1.0
) -> None:
    """Fill ``weight`` from a normal with :func:`init_std` truncated at 2 std (zeros if scale 0)."""
    std = init_std(fan_in, fan_out, scale)
    with torch.no_grad():
        if scale == 0:
            weight.zero_()
        else:
            nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def _layers(module: nn.Module) -> list[nn.Module]:
    kinds = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, BlockLinear)
    return [m for m in module.modules() if isinstance(m, kinds)]


def init_weights(module: nn.Module, outscale: float = 1.0) -> nn.Module:
    """The one initialisation of every network (the official DreamerV3 2023 scheme).

    Every Linear / Conv2d / ConvTranspose2d / BlockLinear weight inside ``module``: normal with
    fan-average variance scaling truncated at 2 std (:func:`trunc_normal_fan_avg_`, scale 1);
    every bias 0; every LayerNorm / RMSNorm weight 1 and bias 0. The output layer, the LAST
    such layer registered in ``module`` (an MLP's output Linear, a decoder's last conv), gets
    the variance scale ``outscale`` instead of 1: DreamerV3 uses 0 for the reward head and the
    critic (they predict exactly 0 at first), 1 for every other output (the actor too, in the
    2023 code; the 2025 code uses 0.01 for the actor and fan-in scaling, not used here).

    The same scheme serves the V1 / V2 presets: their Keras layers used Glorot-uniform
    weights (the same variance) and zero biases, not PyTorch's default init. Every network
    builder calls it at the end of its ``__init__`` on the layers it creates itself (MLP,
    ConvEncoder, ConvDecoder, the GRU cells, the RSSM's posterior input, the decoder's vector
    outputs), so a composite never re-draws (or un-zeroes) the networks it holds.

    Returns ``module``.
    """
    layers = _layers(module)
    for i, layer in enumerate(layers):
        scale = outscale if i == len(layers) - 1 else 1.0
        trunc_normal_fan_avg_(layer.weight, *fans(layer), scale)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    for norm in module.modules():
        if isinstance(norm, nn.LayerNorm | nn.RMSNorm):
            if norm.weight is not None:
                nn.init.ones_(norm.weight)
            if getattr(norm, "bias", None) is not None:
                nn.init.zeros_(norm.bias)
    return module


def zero_init(layer: nn.Linear | BlockLinear) -> nn.Module:
    """``init_weights(layer, outscale=0)``: weights and bias 0 (DreamerV3's reward and critic
    outputs start at exactly 0)."""
    return init_weights(layer, outscale=0.0)
