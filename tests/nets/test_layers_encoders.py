"""Tests of nets/layers.py and nets/encoders.py: shapes, routing of keys, init, equivalences."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_core.nets.distributions import MSEDist, SymlogMSEDist
from dreamer_core.nets.encoders import MultiDecoder, MultiEncoder, preprocess_image, split_keys
from dreamer_core.nets.layers import (
    MLP,
    BlockGRUCell,
    BlockLinear,
    NormGRUCell,
    fans,
    init_weights,
    zero_init,
)
from tests.nets import single_thread  # noqa: F401  (autouse fixture)

SMALL = dict(cnn_depth=4, mlp_units=16, mlp_layers=1)


def image(size: int, channels: int) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, (size, size, channels), np.uint8)


def vector(*shape: int) -> gym.spaces.Box:
    return gym.spaces.Box(-np.inf, np.inf, shape, np.float32)


OBS_SPACES = {
    "image64x3": gym.spaces.Dict({"image": image(64, 3)}),
    "image64x1": gym.spaces.Dict({"image": image(64, 1)}),
    "image16x3": gym.spaces.Dict({"image": image(16, 3)}),
    "vector": gym.spaces.Dict({"state": vector(4)}),
    "dict": gym.spaces.Dict(
        {"image": image(16, 3), "depth": image(16, 1), "pos": vector(3), "speed": vector()}
    ),
}


def random_obs(
    space: gym.spaces.Dict, lead: tuple[int, ...], seed: int = 0
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = {}
    for key, sub in space.spaces.items():
        if sub.dtype == np.uint8:
            obs[key] = torch.randint(0, 256, (*lead, *sub.shape), dtype=torch.uint8, generator=gen)
        else:
            obs[key] = 10 * torch.randn((*lead, *sub.shape), generator=gen)
    return obs


# --- layers ------------------------------------------------------------------------------------


def test_mlp_blocks_shapes_and_biases():
    mlp = MLP(5, 3, units=8, layers=2, norm="layer", act="silu")
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [m.bias is None for m in linears] == [True, True, False]
    assert any(isinstance(m, nn.LayerNorm) for m in mlp.modules())
    assert mlp(torch.randn(2, 4, 5)).shape == (2, 4, 3) and mlp.out_dim == 3
    assert MLP(5, None, 8, 1, "rms", "elu")(torch.randn(7, 5)).shape == (7, 8)
    assert all(
        m.bias is not None for m in MLP(5, None, 8, 2, "none").modules() if isinstance(m, nn.Linear)
    )
    x = torch.randn(3, 5)
    assert torch.equal(MLP(5, None, 8, 0)(x), x)
    with pytest.raises(ValueError, match="unknown norm"):
        MLP(5, 3, 8, 1, norm="batch")


def test_init_weights_is_truncated_fan_avg_and_zero_init_zeroes():
    layer = nn.Linear(600, 400)
    init_weights(layer)
    std = math.sqrt(1 / 500) / 0.87962566103423978
    assert layer.weight.std().item() == pytest.approx(math.sqrt(1 / 500), rel=0.02)
    assert layer.weight.abs().max().item() <= 2 * std and torch.equal(layer.bias, torch.zeros(400))
    out = zero_init(nn.Linear(4, 3))
    assert torch.equal(out(torch.randn(2, 4)), torch.zeros(2, 3))


def test_init_weights_fans_outscale_and_norms():
    # convolutions count the receptive field; a transposed conv's weight is [in, out, k, k]
    assert fans(nn.Conv2d(3, 8, 4)) == (3 * 16, 8 * 16)
    assert fans(nn.ConvTranspose2d(8, 3, 4)) == (8 * 16, 3 * 16)
    assert fans(BlockLinear(32, 64, blocks=4)) == (8, 16)
    # the output layer (the last one) takes the outscale; the others and all biases do not
    mlp = MLP(5, 3, units=8, layers=2, norm="none", outscale=0.0)
    assert torch.equal(mlp(torch.randn(4, 5)), torch.zeros(4, 3))
    assert all(m.weight.abs().sum() > 0 for m in list(mlp.modules())[1:] if isinstance(m, nn.Linear)
               and m is not mlp.net[-1])
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in mlp.modules() if isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match="output layer"):
        MLP(5, None, 8, 1, outscale=0.0)
    # norm layers are reset to weight 1, bias 0
    norm = nn.LayerNorm(4)
    with torch.no_grad():
        norm.weight.fill_(3.0), norm.bias.fill_(2.0)
    init_weights(norm)
    assert torch.equal(norm.weight, torch.ones(4)) and torch.equal(norm.bias, torch.zeros(4))


def test_block_linear_equals_a_block_diagonal_dense_linear():
    block = BlockLinear(12, 8, blocks=4)
    dense = torch.block_diag(*block.weight.detach())  # [12, 8]
    x = torch.randn(2, 3, 12)
    torch.testing.assert_close(block(x), x @ dense + block.bias.detach())
    with pytest.raises(ValueError, match="divisible"):
        BlockLinear(10, 8, blocks=4)


def test_norm_gru_cell_matches_the_dreamerv3_formula():
    cell = NormGRUCell(6, 4, norm="layer")
    x, deter = torch.randn(3, 6), torch.randn(3, 4)
    gates = cell.norm(cell.linear(torch.cat([x, deter], -1)))
    reset, cand, update = gates.split(4, -1)
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update - 1)
    torch.testing.assert_close(cell(x, deter), update * cand + (1 - update) * deter)


def test_block_gru_cell_matches_the_copied_input_formulation():
    """Reference: each group's Linear sees [deter_g, x]; our cell splits that into two maps."""
    D, G, X = 8, 4, 5
    cell = BlockGRUCell(X, D, G, layers=1, norm="none")
    x, deter = torch.randn(2, X), torch.randn(2, D)
    w_x = cell.x_in.weight.detach().T.reshape(X, G, D // G)  # [X, G, D/G]
    weight = torch.cat([cell.deter_in.weight.detach(), w_x.transpose(0, 1)], 1)  # [G, D/G + X, D/G]
    copies = x[:, None].expand(2, G, X)  # [2, G, X]
    inputs = torch.cat([deter.reshape(2, G, D // G), copies], -1)  # [2, G, D/G + X]
    hidden = torch.einsum("bgi,gio->bgo", inputs, weight).reshape(2, D) + cell.x_in.bias.detach()
    hidden = torch.nn.functional.silu(hidden)
    gates = cell.gates(hidden).reshape(2, G, 3, D // G)
    reset, cand, update = (gates[:, :, i].reshape(2, D) for i in range(3))
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update - 1)
    torch.testing.assert_close(cell(x, deter), update * cand + (1 - update) * deter)


# --- encoder / decoder -------------------------------------------------------------------------


def test_split_keys_routes_and_rejects():
    assert split_keys(OBS_SPACES["dict"]) == (["depth", "image"], ["pos", "speed"])
    with pytest.raises(ValueError, match="neither an image"):
        split_keys(gym.spaces.Dict({"float_image": gym.spaces.Box(0, 1, (8, 8, 3), np.float32)}))
    with pytest.raises(ValueError, match="powers of two"):
        MultiEncoder(gym.spaces.Dict({"image": image(12, 3)}), **SMALL)
    with pytest.raises(ValueError, match="share one size"):
        MultiEncoder(gym.spaces.Dict({"a": image(16, 3), "b": image(32, 3)}), **SMALL)


def test_preprocess_image_range():
    pixels = torch.tensor([0, 255, 51], dtype=torch.uint8)
    torch.testing.assert_close(preprocess_image(pixels), torch.tensor([-0.5, 0.5, -0.3]))


@pytest.mark.parametrize("name", list(OBS_SPACES))
@pytest.mark.parametrize("B, T", [(1, 1), (3, 5)])
def test_encoder_decoder_shapes(name, B, T):
    space = OBS_SPACES[name]
    enc = MultiEncoder(space, **SMALL)
    embed = enc(random_obs(space, (B, T)))
    assert embed.shape == (B, T, enc.embed_dim) and torch.isfinite(embed).all()
    dec = MultiDecoder(10, space, **SMALL)
    dists = dec(torch.randn(B, T, 10))
    assert set(dists) == set(dec.image_keys) | set(dec.vector_keys) == set(space.spaces)
    for key, dist in dists.items():
        assert isinstance(dist, MSEDist if key in dec.image_keys else SymlogMSEDist)
        assert dist.mode.shape == (B, T, *space[key].shape)
        target = random_obs(space, (B, T), seed=1)[key]
        target = preprocess_image(target) if key in dec.image_keys else target
        assert dist.log_prob(target).shape == (B, T)


def test_embed_dims_of_the_dreamerv3_layout():
    enc = MultiEncoder(OBS_SPACES["image64x3"], cnn_depth=32, cnn_mults=(2, 3, 4, 4))
    assert enc.embed_dim == 4 * 4 * 128  # four stride-2 stages: 64 -> 4
    enc = MultiEncoder(OBS_SPACES["image16x3"], cnn_depth=32, cnn_mults=(1, 2, 4, 8))
    assert enc.embed_dim == 4 * 4 * 64  # two stages: 16 -> 4
    assert MultiEncoder(OBS_SPACES["vector"], mlp_units=64, mlp_layers=2).embed_dim == 64


def test_encoder_treats_every_row_independently_and_accepts_any_lead_shape():
    space = OBS_SPACES["dict"]
    enc = MultiEncoder(space, **SMALL)
    obs = random_obs(space, (2, 3))
    embed = enc(obs)  # [2, 3, E]
    single = enc({k: v[1, 2] for k, v in obs.items()})  # [E]
    flat = enc({k: v.flatten(0, 1) for k, v in obs.items()})  # [6, E]
    torch.testing.assert_close(single, embed[1, 2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flat, embed.flatten(0, 1))


def test_kernel_five_and_large_images():
    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (128, 64, 1), np.uint8)})
    enc = MultiEncoder(space, cnn_depth=2, kernel=5)
    assert enc(random_obs(space, (2,))).shape == (2, enc.embed_dim)
    assert enc.cnn.out_shape == (8, 8, 4)  # 4 stages (shorter side 64 -> 4)
    dec = MultiDecoder(6, space, cnn_depth=2, kernel=5)
    assert dec(torch.randn(2, 6))["image"].mode.shape == (2, 128, 64, 1)


@pytest.mark.parametrize("start,extra", [(0, 3), (5, 0), (4, 2)])
def test_one_hot_aware_linear_equals_linear_in_value_and_gradients(start, extra, monkeypatch):
    from dreamer_core.nets.distributions import OneHotDist
    from dreamer_core.nets.layers import OneHotAwareLinear

    torch.manual_seed(0)
    S, K, out = 6, 5, 7
    monkeypatch.setattr(OneHotAwareLinear, "min_rows", 1)  # exercise the gather path on a small input
    monkeypatch.setattr(OneHotAwareLinear, "min_classes", 1)
    fast = OneHotAwareLinear(start + S * K + extra, out, True, onehot=(start, S, K))
    plain = torch.nn.Linear(start + S * K + extra, out)
    plain.load_state_dict(fast.state_dict())
    logits = torch.randn(2, 3, S, K, requires_grad=True)
    stoch = OneHotDist(logits, 0.01).sample()  # straight-through one-hot
    stoch = torch.cat([stoch[:, :, :-1], torch.zeros(2, 3, 1, K)], 2)  # an all-zero group (zero initial state)
    dense = torch.randn(2, 3, start + extra, requires_grad=True)
    x = torch.cat([dense[..., :start], stoch.flatten(-2), dense[..., start:]], -1)  # [2, 3, in]
    out_fast, out_plain = fast(x), plain(x)
    torch.testing.assert_close(out_fast, out_plain)
    g = torch.randn_like(out_plain)
    grads_fast = torch.autograd.grad(out_fast, [logits, dense, fast.weight, fast.bias], g, retain_graph=True)
    grads_plain = torch.autograd.grad(out_plain, [logits, dense, plain.weight, plain.bias], g)
    for a, b in zip(grads_fast, grads_plain):
        torch.testing.assert_close(a, b)


def test_one_hot_weight_gradient_as_a_sparse_product_equals_the_dense_one(monkeypatch):
    """The gather layer's weight gradient ``grad.T @ x`` is a sparse product on the CPU: equal to
    the dense product up to float32 rounding (other summation order), the same bits on every
    call, and switchable back to the dense product."""
    from dreamer_core.nets import layers

    torch.manual_seed(0)
    R, S, K, out = 600, 6, 5, 7
    index = torch.randint(0, K, (R, S))
    x = F.one_hot(index, K).float()
    x[:3, 2] = 0  # all-zero groups (the zero initial state)
    value = x.sum(-1)
    flat = index + torch.arange(S) * K
    grad = torch.randn(R, out)
    dense = grad.t() @ x.reshape(R, S * K)
    sparse = layers._onehot_weight_grad(grad, flat, value, S * K)
    assert sparse.shape == dense.shape == (out, S * K)
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-5)
    assert torch.equal(sparse, layers._onehot_weight_grad(grad, flat, value, S * K))

    linear = layers.OneHotAwareLinear(S * K, out, True, onehot=(0, S, K))
    plain = torch.nn.Linear(S * K, out)
    plain.load_state_dict(linear.state_dict())
    plain(x.reshape(R, S * K)).backward(grad)
    monkeypatch.setattr(layers.OneHotAwareLinear, "min_classes", 1)
    linear(x.reshape(R, S * K)).backward(grad)
    torch.testing.assert_close(linear.weight.grad, plain.weight.grad, rtol=1e-6, atol=1e-5)
    monkeypatch.setattr(layers, "sparse_onehot_grad", False)
    linear.weight.grad = None
    linear(x.reshape(R, S * K)).backward(grad)
    assert torch.equal(linear.weight.grad, plain.weight.grad)  # the dense product: nn.Linear's own


@pytest.mark.parametrize("shape", [(300, 64), (4, 80, 64)])
def test_padded_linear_is_bit_identical_to_linear(shape):
    """The 255-bin heads' output layer pads its matmul to 256 outputs for speed; values and all
    gradients must equal nn.Linear's bit for bit (the benchmarks' identity check relies on it)."""
    from dreamer_core.nets.layers import PaddedLinear

    torch.manual_seed(0)
    fast = PaddedLinear(64, 255)
    plain = torch.nn.Linear(64, 255)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_fast, out_plain = fast(x), plain(x2)
    assert out_fast.shape == out_plain.shape == (*shape[:-1], 255)
    assert torch.equal(out_fast, out_plain)
    g = torch.randn_like(out_plain)
    out_fast.backward(g)
    out_plain.backward(g)
    assert torch.equal(x.grad, x2.grad)
    assert torch.equal(fast.weight.grad, plain.weight.grad)
    assert torch.equal(fast.bias.grad, plain.bias.grad)


def test_padded_linear_takes_the_padded_path_only_where_it_helps(monkeypatch):
    from dreamer_core.nets import layers

    calls = []
    monkeypatch.setattr(layers._PaddedAddmm, "apply", lambda *a: calls.append(a[-1]) or torch.zeros(a[0].shape[0], 255))
    layers.PaddedLinear(8, 255)(torch.randn(300, 8))
    assert calls == [256]
    layers.PaddedLinear(8, 255)(torch.randn(10, 8))  # few rows
    layers.PaddedLinear(8, 256)(torch.randn(300, 8))  # already a multiple of 16
    layers.PaddedLinear(8, 3)(torch.randn(300, 8))  # narrow output: other kernels
    layers.PaddedLinear(8, 255)(torch.randn(300, 16)[:, ::2])  # non-contiguous input
    assert calls == [256]


def test_onehot_indices_are_reused_only_for_the_same_unchanged_input(monkeypatch):
    """Heads reading the same features find the one-hot groups once; a different tensor, or the
    same one written in place, is searched again (and gives the right answer)."""
    from dreamer_core.nets import layers

    monkeypatch.setattr(layers.OneHotAwareLinear, "min_rows", 1)
    monkeypatch.setattr(layers.OneHotAwareLinear, "min_classes", 1)
    searches = []
    real_search = layers._onehot_positions

    def counting_search(x3):
        searches.append(x3.shape)
        return real_search(x3)

    monkeypatch.setattr(layers, "_onehot_positions", counting_search)
    torch.manual_seed(0)
    a = layers.OneHotAwareLinear(4 + 12, 5, True, onehot=(4, 3, 4))
    b = layers.OneHotAwareLinear(4 + 12, 7, True, onehot=(4, 3, 4))
    index = torch.randint(0, 4, (6, 3))
    x = torch.cat([torch.randn(6, 4), F.one_hot(index, 4).float().flatten(-2)], -1)
    plain_b = torch.nn.Linear(16, 7)
    plain_b.load_state_dict(b.state_dict())
    a(x)
    torch.testing.assert_close(b(x.detach()), plain_b(x))  # same data through another view
    assert len(searches) == 1
    x[:, 4:] = F.one_hot((index + 1) % 4, 4).float().flatten(-2)  # in-place: a new version
    torch.testing.assert_close(b(x), plain_b(x))
    assert len(searches) == 2
    y = x.clone()
    b(y)
    assert len(searches) == 3


def test_remembered_onehot_classes_replace_the_search(monkeypatch):
    """Classes left by ``remember_onehot`` (as the RSSM's sampled states leave them) spare the
    search and give nn.Linear's value and gradients, also through a detached alias; another
    tensor, or the same one written in place, is searched as before."""
    from dreamer_core.nets import layers

    monkeypatch.setattr(layers.OneHotAwareLinear, "min_rows", 1)
    monkeypatch.setattr(layers.OneHotAwareLinear, "min_classes", 1)
    searches = []
    real_search = layers._onehot_positions
    monkeypatch.setattr(layers, "_onehot_positions", lambda x3: searches.append(1) or real_search(x3))
    torch.manual_seed(0)
    layer = layers.OneHotAwareLinear(2 + 12 + 1, 5, True, onehot=(2, 3, 4))
    plain = torch.nn.Linear(15, 5)
    plain.load_state_dict(layer.state_dict())
    index = torch.randint(0, 4, (2, 6, 3))
    onehot = F.one_hot(index, 4).float().flatten(-2).requires_grad_(True)
    x = torch.cat([torch.randn(2, 6, 2), onehot, torch.randn(2, 6, 1)], -1)
    layers.remember_onehot(x, 2, index, 4)
    out = layer(x.detach())  # a detached alias: the same memory and version
    assert searches == []
    x.retain_grad()
    layers.remember_onehot(x, 2, index, 4)
    (layer(x) * torch.arange(5.0)).sum().backward()
    grads = (x.grad.clone(), layer.weight.grad.clone())
    x.grad = None
    (plain(x) * torch.arange(5.0)).sum().backward()
    assert searches == []
    torch.testing.assert_close(out, plain(x))
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], plain.weight.grad)
    layers.remember_onehot(x, 2, index, 4)
    y = x.detach().clone()
    layer(y)
    assert searches == [1]  # another tensor: searched
    layers.remember_onehot(y, 2, index, 4)
    y[..., 2:14] = F.one_hot((index + 1) % 4, 4).float().flatten(-2)  # written in place: a new version
    torch.testing.assert_close(layer(y), plain(y))
    assert searches == [1, 1]


@pytest.mark.parametrize("shape, chunk", [((6, 3, 4), 1 << 20), ((5, 7, 3, 4), 8), ((3, 4), 5), ((2, 9, 32, 32), 1000)])
def test_onehot_positions_equal_argmax(shape, chunk, monkeypatch):
    """The search by products with 0..K-1, in chunks of any size, finds what argmax finds, on
    strided (sliced) inputs and with all-zero groups (position 0, like argmax)."""
    from dreamer_core.nets import layers

    monkeypatch.setattr(layers, "_SEARCH_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, shape[-1], shape[:-1], generator=g)
    onehot = F.one_hot(index, shape[-1]).float()
    onehot[(torch.rand(shape[:-1], generator=g) < 0.2)] = 0.0  # some all-zero groups
    wide = torch.cat([torch.randn(*shape[:-2], 3, generator=g), onehot.flatten(-2)], -1)  # a block at an offset
    x3 = wide[..., 3:].unflatten(-1, shape[-2:])
    assert not x3.is_contiguous() or len(shape) == 2
    found = layers._onehot_positions(x3)
    assert found.dtype == torch.long and found.shape == shape[:-1]
    assert torch.equal(found, x3.argmax(-1))
