"""Data-parallel training on existing distributed engines (DESIGN.md §9), never a home-made one.

A job whose config has `distributed:` with more than one process (jobs/runner.py) runs as a
process group that the engine's own launcher starts: `python -m torch.distributed.run` (torch
DDP over gloo on a CPU, nccl on GPUs) or `mlx.launch` (the ring backend across Macs, MPI where
installed). Each rank runs the one training loop with its rank and world size:

    launch.py   the daemon's side: the launcher's command, rank 0's events into the job, stop
                (cancel, shutdown), which rank failed and its log
    rank.py     a rank: `python -m tunerd.distributed.rank`, the Trainer under the engine
    sync.py     the engines' collectives: gradients summed before each optimizer step, the loss
                sum, the agreed stop

Semantics (training/loop.py): a step is per_device_train_batch_size x gradient_accumulation_steps
x world_size rows (the global batch, in Started), every rank builds the same batches and runs its
share, so each row is trained once per epoch across the ranks; the loss is normalised by the whole
step's supervised tokens; rank 0 writes checkpoints and the adapter; a resume restarts the group
from the last checkpoint at the same global data position.
"""
