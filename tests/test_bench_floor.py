"""benchmarks/bench_floor.py: the products it records and replays are the update's own.

The floor is only an argument if the recorder sees every product of a step and nothing else:
its replayed calls must hold exactly the FLOPs that FlopCounterMode counts for the same step
(which counts products only), with the right calls and multiplicities."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_floor  # noqa: E402

from tests.common import episode_batch, tiny_world_model  # noqa: E402


def test_records_a_linear_layers_three_products_and_nothing_else():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 3)
    x = torch.randn(5, 8, requires_grad=True)

    def step():
        torch.nn.functional.silu(layer(x)).sum().backward()

    calls = bench_floor.record_products(step)
    names = sorted(func._opname for func, _, _ in calls)
    assert names == ["addmm", "mm", "mm"]  # forward; input and weight gradients
    rows = bench_floor.replay(calls, repeats=2)
    assert sorted((r["op"], r["count"]) for r in rows) == [("addmm", 1), ("mm", 1), ("mm", 1)]  # shapes differ
    assert all(r["ms"] > 0 for r in rows)
    assert sum(r["flops"] * r["count"] for r in rows) == 3 * 2 * 5 * 8 * 3


def test_replayed_flops_equal_the_counted_flops_of_a_world_model_update():
    torch.manual_seed(0)
    model = tiny_world_model()
    batch = episode_batch(B=2, T=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad()
        loss, _, _ = model.loss(batch)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    calls = bench_floor.record_products(step)
    rows = bench_floor.replay(calls, repeats=1)
    assert len(calls) > 20 and sum(r["count"] for r in rows) == len(calls)
    replayed = sum(r["flops"] * r["count"] for r in rows)
    assert replayed == counter.get_total_flops() > 0
    summary = bench_floor.summarize({"rows": rows})
    assert summary["floor_ms"] == sum(r["ms"] * r["count"] for r in rows) > 0


def test_a_sparse_one_hot_weight_gradient_is_replayed_on_its_pattern():
    """The gather-sum layers' weight gradient is a sparse product: kept whole, one multiply-add
    per entry and output column (not the dense count FlopCounterMode would give)."""
    from dreamer_core.nets.layers import OneHotAwareLinear

    torch.manual_seed(0)
    rows, groups, classes, out = 256, 4, 32, 8
    layer = OneHotAwareLinear(groups * classes, out, bias=False, onehot=(0, groups, classes))
    picks = torch.randint(0, classes, (rows, groups))
    x = torch.nn.functional.one_hot(picks, classes).float().reshape(rows, -1)

    def step():
        layer(x).square().sum().backward()

    calls = bench_floor.record_products(step)
    rows_out = bench_floor.replay(calls, repeats=1)
    sparse = [r for r in rows_out if any("sparse" in s for s in r["shapes"])]
    assert len(sparse) == 1 and sparse[0]["count"] == 1
    assert sparse[0]["flops"] == 2 * rows * groups * out
