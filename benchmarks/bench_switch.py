"""A/B of one speed change inside one process: full updates alternate between the code as it is
and the code with the change switched off, and the paired differences are reported.

    python benchmarks/bench_switch.py --switch onehot-classes --size XS --pairs 16
    python benchmarks/bench_switch.py --switch draw-search --part imagine --pairs 16

Fresh-process A/B (``bench_update.py --base-tree``) pays a process start, a warm-up and the
machine's drift between the two sides; for a change worth a few percent the rounds' scatter on
this shared machine is larger than the change. Here the two sides run in turn on the same
models and data, in one process, and each pair's difference (off - on, CPU time) is taken
before the median, so slow spells of the machine hit both sides of a pair.

Each switch names a change and how to undo it in place (the earlier implementation, kept here
only for this comparison). Both sides must compute the same thing: the script checks that the
first update's metrics are bit-identical before timing.

``--part``: ``update`` (world model + actor-critic, as ``dreamer train`` runs it), ``imagine``
(the H=15 rollout from the 1024 posterior states) or ``score`` (imagination followed by the
heads and returns).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable


def _patch(owner, name: str, value) -> Callable[[], None]:
    """Set ``owner.name`` to ``value``; the returned function puts the kept one back."""
    kept = getattr(owner, name)
    setattr(owner, name, value)
    return lambda: setattr(owner, name, kept)


def _onehot_classes_off() -> Callable[[], None]:
    """Sampled states no longer hand their classes to the gather-sum layers: each layer
    searches its one-hot block (the code before this change)."""
    from dreamer_core.nets import rssm

    return _patch(rssm, "remember_onehot", lambda *args: None)


def _draw_search_off() -> Callable[[], None]:
    """Categorical draws of any number of classes count the classes whose cumulative
    probability is below the noise (a [..., K] comparison, converted and summed) instead of a
    binary search."""
    from dreamer_core.nets import distributions

    return _patch(distributions, "_DRAW_SEARCH_CLASSES", 1 << 62)


def _state_classes_off() -> Callable[[], None]:
    """Sampled states carry no classes at all (``RSSMState.index`` None): neither the
    bookkeeping (stacking, selecting the classes with the states) nor the layers' use of them."""
    from dreamer_core.nets.distributions import OneHotDist

    sample, mode = OneHotDist.sample_with_index, OneHotDist.mode_with_index
    undo_sample = _patch(OneHotDist, "sample_with_index", lambda self, generator=None: (sample(self, generator)[0], None))
    undo_mode = _patch(OneHotDist, "mode_with_index", lambda self: (mode(self)[0], None))

    def undo() -> None:
        undo_mode()
        undo_sample()
    return undo


SWITCHES: dict[str, Callable[[], Callable[[], None]]] = {
    "onehot-classes": _onehot_classes_off,
    "draw-search": _draw_search_off,
    "state-classes": _state_classes_off,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switch", choices=sorted(SWITCHES), nargs="+", required=True,
                        help="the changes switched off together on the 'off' side")
    parser.add_argument("--size", default="XS")
    parser.add_argument("--part", default="update", choices=["update", "imagine", "score"])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from dreamer_core import runtime

    runtime.setup(args.threads)
    from bench_update import build, full_update, make_batch

    parts = build(args.size, "vector")
    wm, agent, cfg = parts["world_model"], parts["agent"], parts["cfg"]
    batch = make_batch("vector")
    _, _, post = wm.loss(batch)
    start = post.detach().flatten(0, 1)
    dynamics = agent.grad_mode == "dynamics"
    first_cont = torch.ones(start.batch_shape[0])

    def imagine():
        wm.requires_grad_(False)
        try:
            return agent.imagine(wm, start, cfg.horizon, dynamics)
        finally:
            wm.requires_grad_(True)

    def score():
        states = imagine()[0]
        wm.requires_grad_(False)
        try:
            return agent.score(wm, wm.features(states), first_cont, dynamics)
        finally:
            wm.requires_grad_(True)

    counter = iter(range(1, 1 << 30))
    work = {"update": lambda: full_update(parts, batch, next(counter)), "imagine": imagine, "score": score}[args.part]

    def side(off: bool, fn: Callable):
        undos = [SWITCHES[name]() for name in args.switch] if off else []
        try:
            return fn()
        finally:
            for undo in reversed(undos):
                undo()

    def first_metrics(off: bool) -> dict:
        torch.manual_seed(0)
        fresh = build(args.size, "vector")
        torch.manual_seed(1)
        return side(off, lambda: full_update(fresh, batch, 0))

    on, off = first_metrics(False), first_metrics(True)
    if on != off:
        raise SystemExit(f"the two sides differ: {sorted(k for k in on if on[k] != off.get(k))}")
    side(False, work), side(True, work)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.pairs):
        for switched_off in ((False, True) if i % 2 else (True, False)):
            begin = time.process_time()
            side(switched_off, work)
            times[switched_off].append((time.process_time() - begin) * 1000)
    diffs = [b - a for a, b in zip(times[False], times[True])]
    on_ms, off_ms = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.size} {args.part}, switched off: {' + '.join(args.switch)}; {args.pairs} pairs, CPU ms, "
          f"{args.threads} thread(s); first update's metrics bit-identical")
    print(f"  on  (as the code is): median {on_ms:8.1f}")
    print(f"  off (change undone):  median {off_ms:8.1f}")
    print(f"  off - on per pair:    median {statistics.median(diffs):+8.1f}  "
          f"({statistics.median(diffs) / off_ms:+.1%} of off); pairs where on was faster: "
          f"{sum(d > 0 for d in diffs)} of {len(diffs)}")


if __name__ == "__main__":
    sys.exit(main())
