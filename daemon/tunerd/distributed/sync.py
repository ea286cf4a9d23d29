"""The engines' collectives, as one rank sees them (DESIGN.md §9): nothing home-made.

    engine(name) -> Engine     ddp: torch.distributed (gloo on a CPU, nccl on CUDA), initialised from
                               the env:// variables torchrun sets; mlx: mx.distributed (the ring
                               backend mlx.launch sets up, or MPI)
    Engine.all_sum(x)          a float summed across the ranks (the step's loss sum)
    Engine.any(flag)           true on every rank when one rank says so (stop between steps)
    Synced(backend, engine)    the backend, its accumulated gradients summed across the ranks before
                               each optimizer step: torch: one flat all_reduce (what DDP's buckets do;
                               the DDP module itself needs the same number of forwards on every rank,
                               and a step's last micro-batches may leave a rank with none); mlx:
                               mlx.nn.utils.average_gradients (mlx-lm's), times the world size

A collective that fails because a peer went away raises `PeerLost`: the rank that failed first is
the one to blame (distributed/launch.py).
"""
from __future__ import annotations

import os


class PeerLost(RuntimeError):
    """A collective failed: another rank (or the launcher) went away."""


class Engine:
    name = ""
    rank = 0
    world_size = 1

    def all_sum(self, x: float) -> float:
        raise NotImplementedError

    def any(self, flag: bool) -> bool:
        raise NotImplementedError

    def sync_grads(self, backend) -> float:
        """Sum (or average) the backend's accumulated gradients across the ranks; the factor that
        turns what it left into the sum (1 for a sum, world_size for an average)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class TorchEngine(Engine):
    name = "ddp"

    def __init__(self):
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        cuda = torch.cuda.is_available()
        if cuda:   # one GPU per rank: "cuda" is this rank's (pick_device gives torch.device("cuda"))
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        self.device = torch.device("cuda") if cuda else torch.device("cpu")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def _all_reduce(self, t, op=None):
        try:
            self.dist.all_reduce(t, op=op or self.dist.ReduceOp.SUM)
        except Exception as e:   # noqa: BLE001 - gloo/nccl raise several kinds when a peer dies
            raise PeerLost(f"a collective failed (another rank stopped): {str(e).splitlines()[0][:200]}") from e
        return t

    def all_sum(self, x: float) -> float:
        return float(self._all_reduce(self.torch.tensor([x], dtype=self.torch.float64, device=self.device))[0])

    def any(self, flag: bool) -> bool:
        t = self.torch.tensor([1 if flag else 0], dtype=self.torch.int32, device=self.device)
        return bool(self._all_reduce(t, self.dist.ReduceOp.MAX)[0])

    def sync_grads(self, backend) -> float:
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        params = backend._params
        for p in params:   # a rank that ran no micro-batch this step adds zeros
            if p.grad is None:
                p.grad = self.torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = self._all_reduce(_flatten_dense_tensors(grads))
        for g, s in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(s)
        return 1.0

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class MLXEngine(Engine):
    name = "mlx"

    def __init__(self):
        import mlx.core as mx

        self.mx = mx
        self.group = mx.distributed.init(strict=True)
        self.rank, self.world_size = self.group.rank(), self.group.size()

    def _sum(self, a):
        try:
            out = self.mx.distributed.all_sum(a, group=self.group)
            self.mx.eval(out)
        except Exception as e:   # noqa: BLE001
            raise PeerLost(f"a collective failed (another rank stopped): {str(e).splitlines()[0][:200]}") from e
        return out

    def all_sum(self, x: float) -> float:
        return float(self._sum(self.mx.array([x], dtype=self.mx.float32))[0])

    def any(self, flag: bool) -> bool:
        return float(self._sum(self.mx.array([1.0 if flag else 0.0]))[0]) > 0

    def sync_grads(self, backend) -> float:
        from mlx.nn.utils import average_gradients
        from mlx.utils import tree_map

        if backend._acc is None:   # a rank that ran no micro-batch this step adds zeros
            backend._acc = tree_map(self.mx.zeros_like, backend.model.trainable_parameters())
        try:
            backend._acc = average_gradients(backend._acc, group=self.group)
            self.mx.eval(backend._acc)
        except Exception as e:   # noqa: BLE001
            raise PeerLost(f"a collective failed (another rank stopped): {str(e).splitlines()[0][:200]}") from e
        return float(self.world_size)


def engine(name: str) -> Engine:
    """The engine a rank runs under: ddp (torchrun) or mlx (mlx.launch)."""
    return {"ddp": TorchEngine, "mlx": MLXEngine}[name]()


class Synced:
    """A training backend whose optimizer step first sums the gradients across the ranks; every
    other attribute is the backend's own."""

    def __init__(self, backend, eng: Engine):
        self._backend, self._engine = backend, eng

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def optimizer_step(self, lr: float, grad_scale: float, max_grad_norm: float) -> float:
        factor = self._engine.sync_grads(self._backend)
        return self._backend.optimizer_step(lr, grad_scale * factor, max_grad_norm)
