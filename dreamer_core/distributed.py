"""Data-parallel training over ``torch.distributed``: the process group a ``torchrun`` launch
describes, and the few collectives the training stages need.

    torchrun --nproc-per-node 2 -m dreamer_core train-world-model data/cartpole --out runs/ddp

``init(device)`` reads the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group: gloo on CPU,
NCCL on CUDA with one GPU per rank (``cuda:LOCAL_RANK``). Without those variables (or with
``WORLD_SIZE=1``) it returns ``SINGLE`` and nothing changes: every helper below is then a no-op,
and the stages never call the collectives.

Gradients are averaged by one explicit all-reduce of the flattened gradients (``Context.
average_gradients``) between ``backward`` and clipping, instead of wrapping the model in
``DistributedDataParallel``: the world model keeps its interface (``loss``, ``observe``, ...
are methods, not ``forward``), clipping sees the global gradient, and one collective carries the
finite flag and the loss metrics too, so every rank takes the same decision on a non-finite
update and logs the global batch's means.

The online loop (``dreamer train``) also exchanges data: every env step each rank's new replay
rows go to every rank (``ArrayExchange``: one all-gather of row counts and bytes), so all ranks
hold the same replay.

Imports: torch and numpy only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_LEFT_KEY = "dreamer_core/left/"  # + rank: set in the launch's store once that rank has left the group


@dataclass(frozen=True)
class Context:
    """This process's place in a data-parallel run (``SINGLE``: a run of one process).

    ``owned``: ``init`` created the process group, so ``close`` destroys it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    owned: bool = False

    @property
    def active(self) -> bool:
        """More than one rank: the collectives run."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the only rank that writes checkpoints, metrics, configs and progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``); anything else stays."""
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def seed(self, seed: int) -> int:
        """A torch seed for this rank: ``seed`` itself on rank 0 (a one-process run's stream),
        an independent child of it on every other rank (as the sampler's rank streams)."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence(seed, spawn_key=(self.rank,)).generate_state(1, np.uint64)[0] >> 1)

    # --- collectives (no-ops with one rank) -------------------------------------------------

    def all(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on every rank."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0.5)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on some rank."""
        return not self.all(not flag)

    def average_gradients(self, params: Iterable[torch.Tensor], finite: bool,
                          metrics: dict[str, torch.Tensor] | None = None,
                          ) -> tuple[bool, dict[str, torch.Tensor]]:
        """Average the gradients of ``params`` over the ranks, in place (one all-reduce).

        ``finite``: this rank's loss was finite (and ``backward`` ran); a missing gradient counts
        as zeros in the sum. Returns (finite on every rank, ``metrics`` averaged over the ranks):
        every rank gets the same answer, so the ranks never diverge. A gradient that is None stays
        None (which parameters get one is fixed by the model, the same on every rank). With the
        same number of samples per rank, the average of the ranks' mean gradients is the mean
        gradient of the global batch."""
        metrics = dict(metrics or {})
        if not self.active:
            return finite, metrics
        params = [p for p in params if p.requires_grad]
        device = params[0].device
        values = [torch.as_tensor(v, dtype=torch.float32, device=device).detach().reshape(1) for v in metrics.values()]
        parts = [(p.grad.reshape(-1).float() if finite and p.grad is not None
                  else torch.zeros(p.numel(), device=device)) for p in params]
        flag = torch.tensor([1.0 if finite else 0.0], device=device)
        buffer = torch.cat([*parts, *values, flag])
        dist.all_reduce(buffer)
        if buffer[-1].item() < self.world_size - 0.5:  # some rank's loss was not finite
            return False, {}
        buffer.div_(self.world_size)
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(buffer[offset:offset + n].view_as(p.grad))
            offset += n
        averaged = {k: buffer[offset + i] for i, k in enumerate(metrics)}
        return True, averaged

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order, on rank 0 (an empty list on the others)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size if self.is_main else []
        dist.gather_object(obj, out if self.is_main else None, dst=0)
        return out

    def gather_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's ``values`` (the same shape on each) joined along the first axis in rank
        order, detached, on every rank; ``values`` itself with one rank."""
        values = values.detach().contiguous()
        if not self.active:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world_size)]
        dist.all_gather(parts, values)
        return torch.cat(parts)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order, on every rank (picklable)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group when ``init`` joined it.

        On a normal end the ranks pass a barrier, then leave one at a time, the highest rank
        first: each waits (in the launch's key-value store, not over the group's sockets) until
        the rank above it has torn its group down. A gloo rank has been seen to abort ("terminate
        called without an active exception") after a successful 2-rank run, twice in CI, even
        with the barrier before a simultaneous teardown; one at a time, no rank's sockets close
        while a peer is still tearing its own down. Called while an exception propagates, it
        leaves at once (torchrun then stops the other ranks)."""
        if not (self.owned and dist.is_initialized()):
            return
        if sys.exc_info()[0] is not None:
            dist.destroy_process_group()
            return
        store = dist.distributed_c10d._get_default_store()  # outlives the group: torchrun's store
        dist.barrier()
        if self.rank < self.world_size - 1:
            store.wait([f"{_LEFT_KEY}{self.rank + 1}"])
        dist.destroy_process_group()
        store.set(f"{_LEFT_KEY}{self.rank}", "1")

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


SINGLE = Context()


class ArrayExchange:
    """Every rank's numpy arrays to every rank, in rank order, called again and again (the
    online loop exchanges each env step's new replay rows with it).

    Every rank passes the same keys in the same order, each array with the same dtype and
    trailing shape on every rank; the first axis (rows) may differ between ranks and calls.
    One all-gather per call: each rank sends its row counts (a header) and its bytes padded to
    a capacity all ranks agree on. When some rank's bytes do not fit (every rank sees that in
    the headers), a second all-gather sends the payloads again with room for the largest, and
    the capacity stays that large, so rows of a steady size cost one collective.

    Shapes:
        arrays: {key: [n_rank, ...]}  ->  [{key: [n_r, ...]} for r in ranks]
    """

    def __init__(self, context: Context):
        self.context = context
        self.capacity = 0  # payload bytes per rank, the same on every rank (grows, never shrinks)

    def __call__(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        ctx = self.context
        if not ctx.active:
            return [arrays]
        keys = list(arrays)
        mine = [np.ascontiguousarray(arrays[k]) for k in keys]
        if any(a.ndim == 0 for a in mine):
            raise ValueError("ArrayExchange needs arrays with a first axis (rows)")
        row_bytes = np.array([a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)) for a in mine], np.int64)
        counts = np.array([len(a) for a in mine], np.int64)
        header = 8 * len(keys)
        payload = np.concatenate([a.reshape(-1).view(np.uint8) for a in mine]) if mine else np.zeros(0, np.uint8)
        send = np.zeros(header + self.capacity, np.uint8)
        send[:header] = counts.view(np.uint8)
        if len(payload) <= self.capacity:
            send[header:header + len(payload)] = payload
        received = self._all_gather(send)
        every = [r[:header].view(np.int64).copy() for r in received]
        need = max(int(c @ row_bytes) for c in every)
        if need > self.capacity:  # some rank's rows did not fit: every rank saw it in the headers
            self.capacity = need
            send = np.zeros(need, np.uint8)
            send[:len(payload)] = payload
            received = self._all_gather(send)
        else:
            received = [r[header:] for r in received]
        out = []
        for r, (raw, rows) in enumerate(zip(received, every)):
            if r == ctx.rank:
                out.append(dict(zip(keys, mine)))
                continue
            part, offset = {}, 0
            for key, a, n, b in zip(keys, mine, rows.tolist(), row_bytes.tolist()):
                part[key] = raw[offset:offset + n * b].view(a.dtype).reshape(n, *a.shape[1:]).copy()
                offset += n * b
            out.append(part)
        return out

    def _all_gather(self, send: np.ndarray) -> list[np.ndarray]:
        device = self.context._comm_device()
        tensor = torch.from_numpy(send).to(device)
        parts = [torch.empty_like(tensor) for _ in range(self.context.world_size)]
        dist.all_gather(parts, tensor)
        return [p.cpu().numpy() for p in parts]


def launched() -> bool:
    """The environment describes a launch of more than one process (``torchrun``)."""
    return all(k in os.environ for k in ENV) and int(os.environ["WORLD_SIZE"]) > 1


def init(device: torch.device) -> Context:
    """This process's ``Context``: the process group already joined (by the caller), or the one
    ``torchrun``'s environment describes (joined now: NCCL when ``device`` is CUDA, else gloo),
    or ``SINGLE``. Idempotent."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                       dist.get_backend())
    if not launched():
        return SINGLE
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, backend, owned=True)

