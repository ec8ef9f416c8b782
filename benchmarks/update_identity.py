"""Bit-identity check for speed work: run K full updates and save (or compare) every parameter
and metric.

    python benchmarks/update_identity.py --save /tmp/ref.pt [--sizes tiny XS] [--obs vector image]
    python benchmarks/update_identity.py --compare /tmp/ref.pt

Each case builds the models of `bench_update.py` (seed 0), runs ``--updates`` full updates
(world model + actor-critic, as `dreamer train` does per train step) on one thread, with
continuous (Box) actions as well as discrete ones so both actor gradients (REINFORCE, dynamics
backprop) are covered. ``--compare`` prints the largest difference per case and exits non-zero
unless every tensor and metric is bit-identical.
"""

from __future__ import annotations

import argparse
import sys

import torch
from bench_update import build, full_update, make_batch


def run_case(size: str, obs: str, action: str, updates: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    parts = build(size, obs, action=action)
    batch = make_batch(obs, action=action)
    out: dict[str, torch.Tensor] = {}
    for i in range(updates):
        torch.manual_seed(100 + i)  # the imagination's samples
        for k, v in full_update(parts, batch, i).items():
            out[f"metric/{i}/{k}"] = torch.tensor(v)
    for who in ("world_model", "agent"):
        for k, v in parts[who].state_dict().items():
            out[f"{who}/{k}"] = v.detach().clone()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--save")
    p.add_argument("--compare")
    p.add_argument("--sizes", nargs="+", default=["tiny", "XS"])
    p.add_argument("--obs", nargs="+", default=["vector", "image"])
    p.add_argument("--actions", nargs="+", default=["discrete", "box"])
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--dense-onehot-grad", action="store_true",
                   help="the one-hot layers' weight gradient as a dense product (as before it became a sparse "
                        "one, which sums in another order): compares bit for bit with references of then")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.dense_onehot_grad:
        from dreamer_core.nets import layers

        layers.sparse_onehot_grad = False
    results = {f"{s}/{o}/{a}": run_case(s, o, a, args.updates)
               for s in args.sizes for o in args.obs for a in args.actions}
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} cases to {args.save}")
        return
    ref = torch.load(args.compare)
    bad = 0
    for case, tensors in results.items():
        if case not in ref:
            print(f"{case:24s} not in {args.compare} (saved with other --sizes, --obs or --actions)")
            bad += 1
            continue
        worst, where = 0.0, ""
        for k, v in tensors.items():
            r = ref[case][k]
            if not torch.equal(v, r):
                d = float((v.double() - r.double()).abs().max())
                if d >= worst:
                    worst, where = d, k
        bad += worst > 0 or any(not torch.equal(v, ref[case][k]) for k, v in tensors.items())
        print(f"{case:24s} {'identical' if worst == 0 else f'max |diff| {worst:.3g} at {where}'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
