"""Process-level training state: distributed setup (torchrun) and RNG snapshots for resume.

Distributed: `torchrun --nproc_per_node N -m bimatting train ...` (or `python -m
torch.distributed.run`) sets RANK / WORLD_SIZE / LOCAL_RANK; we join a process group with NCCL on
CUDA and gloo on CPU. One process per GPU (cuda:LOCAL_RANK). Without those variables: one process.
"""

import dataclasses
import os
import random

import numpy as np
import torch
import torch.distributed as dist


@dataclasses.dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def all_gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] (just [obj] in a single process)."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_(self, tensors, source=0):
        """Overwrite each tensor in place with rank `source`'s value (no-op in a single process)."""
        if self.distributed:
            for tensor in tensors:
                dist.broadcast(tensor, source)

    def close(self):
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def start(device="cpu"):
    """The Runtime of this process; joins the torchrun process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Runtime(rank, world_size, local_rank, torch_device)


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices) with `seed`."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state():
    """Python, NumPy, torch CPU and CUDA generator states, as checkpoint-safe values."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    """Restore what rng_state() returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
