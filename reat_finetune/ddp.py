"""Fine-tuning under torchrun: DistributedDataParallel, the global batch split across ranks.

Every method is the identity (or a no-op) in a plain one-process run, so the training loop
calls them unconditionally. Under torchrun:

* each global batch of ``--batch-size-train`` positions of the seeded permutation (the same
  permutation on every rank) is split into ``world_size`` contiguous parts, one per rank
  (the first ``B % world`` ranks get one image more); an epoch has ``n // B`` batches plus a
  last partial one when it holds at least two images per rank;
* the training forward goes through :class:`~torch.nn.parallel.DistributedDataParallel`
  (gradients averaged over ranks); the attack uses the plain module in eval mode;
* on GPUs BatchNorm layers become SyncBatchNorm for training (``--no-sync-bn`` keeps them),
  and are put back afterwards, sharing the same tensors;
* per-batch loss, penalty, adversarial predictions and labels are gathered, so the running
  figures and the RBL counts are those of the whole global batch on every rank; a Ctrl-C
  seen by any rank stops all of them after the same batch;
* validation runs on every rank and rank 0's figures are used everywhere, so all ranks keep
  the same best epoch; BatchNorm buffers are copied from rank 0 before validation;
* attack and augmentation streams are seeded per rank; checkpoints (rank 0 only) hold every
  rank's streams, and ``--resume`` needs the same world size.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from audit.run import distributed

from .errors import RepairError

RANK_STREAM = 1000  # rank r > 0 draws its attack/augmentation streams from stream + 1000 * r


def check_world_size(resume_state: Optional[dict[str, Any]], folder: str) -> None:
    """A checkpoint resumes only with the world size that wrote it (the streams and batch split depend on it)."""
    if resume_state is None:
        return
    saved, now = resume_state["world_size"], distributed.world_size()  # an int, checked on reading
    if saved != now:
        raise RepairError(f"--resume {folder}: the checkpoint was written by {saved} process(es), this run has {now}; "
                          f"resume with the same launch (world size {saved}), or start afresh with another --out")


def check_global_batch(batch: int) -> None:
    """Under torchrun ``--batch-size-train`` is split across processes: at least two images each."""
    world = distributed.world_size()
    if world > 1 and batch < 2 * world:
        raise RepairError(f"--batch-size-train {batch} is the global batch: with {world} processes it must "
                          f"be at least {2 * world} (two images per process for BatchNorm)")


class TrainDist:
    """What :func:`~reat_finetune.train.fine_tune` does differently under torchrun (nothing in a plain run)."""

    def __init__(self, sync_bn: bool = True) -> None:
        self.ctx = distributed.current()
        self.world = distributed.world_size()
        self.rank = distributed.rank()
        self.sync_bn = sync_bn
        self._restore_bn: list[tuple[nn.Module, str, nn.Module]] = []
        self._ddp: Optional[nn.Module] = None

    @property
    def active(self) -> bool:
        return self.ctx is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- batches ---------------------------------------------------------------------------
    def n_batches(self, n: int, batch: int, plain: Callable[[int, int], int]) -> int:
        """Batches per epoch; under torchrun a last partial batch needs two images per rank."""
        if not self.active:
            return plain(n, batch)
        check_global_batch(batch)
        nb, rest = divmod(n, batch)
        return nb + (1 if rest >= 2 * self.world else 0)

    def local(self, positions: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch."""
        return torch.tensor_split(positions, self.world)[self.rank] if self.active else positions

    def stream(self, stream: int) -> int:
        """Per-rank random streams (rank 0 keeps the plain run's)."""
        return stream + RANK_STREAM * self.rank

    # -- model -----------------------------------------------------------------------------
    def wrap(self, module: nn.Module, net: nn.Module, device: torch.device) -> Optional[Callable]:
        """The training forward: DDP around ``module`` (SyncBatchNorm in ``net`` on GPUs); None in a plain run."""
        if not self.active:
            return None
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.sync_bn and device.type == "cuda":
            self._restore_bn = convert_sync_batchnorm(net)
        ids = [device.index] if device.type == "cuda" else None
        self._ddp = DDP(module, device_ids=ids)  # buffers (BatchNorm statistics) follow rank 0 at each forward
        return self._ddp

    def finish(self) -> None:
        """Put the original BatchNorm layers back (they share the trained tensors)."""
        restore_batchnorm(self._restore_bn)
        self._restore_bn = []
        self._ddp = None

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for b in module.buffers():
                dist.broadcast(b, src=0)

    # -- agreement ---------------------------------------------------------------------------
    def stop(self, requested: bool) -> bool:
        """Stop when any rank saw a Ctrl-C, so all of them stop after the same batch."""
        return distributed.any_across(requested)

    def batch_outcome(self, loss: torch.Tensor, pen: torch.Tensor, pred: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, penalty, predictions, labels) of the whole global batch: means weighted by rank batch sizes."""
        if not self.active:
            return loss, pen, pred, y
        k = int(y.shape[0])
        parts = distributed.all_gather((float(loss) * k, float(pen) * k, pred.cpu(), y.cpu()))
        n = sum(int(p[3].shape[0]) for p in parts)
        dev = y.device
        return (torch.tensor(sum(p[0] for p in parts) / n), torch.tensor(sum(p[1] for p in parts) / n),
                torch.cat([p[2] for p in parts]).to(dev), torch.cat([p[3] for p in parts]).to(dev))

    def same(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (validation figures)."""
        return distributed.broadcast_from_main(value)

    def per_rank(self, value: Any) -> Optional[list[Any]]:
        """Every rank's ``value`` on rank 0 (random stream states for the checkpoint)."""
        return distributed.gather_to_main(value)


def convert_sync_batchnorm(net: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every BatchNorm of ``net`` for a SyncBatchNorm sharing its parameters and buffers.

    Returns what :func:`restore_batchnorm` needs to put the originals back.
    """
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
                if child.affine:
                    sync.weight, sync.bias = child.weight, child.bias
                if child.track_running_stats:
                    sync.running_mean, sync.running_var = child.running_mean, child.running_var
                    sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(parent, name, sync)
                swaps.append((parent, name, child))
    return swaps


def restore_batchnorm(swaps: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Undo :func:`convert_sync_batchnorm` (the originals hold the trained values already)."""
    for parent, name, original in reversed(swaps):
        current = getattr(parent, name)
        original.train(current.training)
        setattr(parent, name, original)
