"""Deterministic, shardable, resumable sampling: every sample is a pure function of its key.

A sampler yields keys (index, seed); `SeededDataset` loads base[index] with Python's `random`,
NumPy's global RNG and torch's CPU RNG seeded from `seed` (and restored afterwards). So the data a
step sees depends only on (run seed, epoch or step, rank, position), never on DataLoader workers,
on what else consumed random numbers, or on whether the run was resumed: that is what makes
resume bit-identical.

    EpochSampler   the main (low-resolution) pass: one shuffled permutation per epoch, sharded
                   across ranks like DistributedSampler, starting at any position
    StepSampler    side passes (HR, segmentation, unlabelled): for each global step whose plan
                   includes the pass, `batch` indices drawn with replacement
"""

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def derive_seed(*parts):
    """A 63-bit seed from integers/strings (NumPy SeedSequence: well mixed, platform-independent)."""
    words = [
        part if isinstance(part, int) else int.from_bytes(str(part).encode(), "little") % (1 << 63) for part in parts
    ]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def seeded_rngs(seed):
    """Seed random, numpy and torch (CPU) for the block; restore their previous states after."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class SeededDataset(Dataset):
    """dataset[(index, seed)] = base[index] computed under seeded_rngs(seed)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key
        with seeded_rngs(seed):
            return self.base[index]


class EpochSampler(Sampler):
    """Keys of one epoch for one rank: a permutation seeded by (seed, epoch), padded to a multiple
    of world_size * batch (wrapping around), every world_size-th entry from `rank`, from `start`."""

    def __init__(self, length, batch, seed, epoch, rank=0, world_size=1, start=0):
        self.length, self.batch, self.seed, self.epoch = length, batch, seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, start

    def per_rank(self):
        """Samples per rank per epoch (a whole number of batches, at least one batch)."""
        per_rank = -(-self.length // self.world_size)
        return max(1, -(-per_rank // self.batch)) * self.batch

    def __len__(self):
        return self.per_rank() - self.start

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", self.epoch))
        order = torch.randperm(self.length, generator=generator).tolist()
        total = self.per_rank() * self.world_size
        order = (order * (total // self.length + 1))[:total]
        mine = order[self.rank :: self.world_size]
        for position in range(self.start, len(mine)):
            yield mine[position], derive_seed(self.seed, "sample", self.epoch, self.rank, position)


class StepSampler(Sampler):
    """Endless keys for a side pass: for each step >= start with uses(step) true, `batch` keys."""

    def __init__(self, length, batch, seed, name, uses, rank=0, start=0):
        self.length, self.batch, self.seed, self.name = length, batch, seed, name
        self.uses, self.rank, self.start = uses, rank, start

    def __iter__(self):
        step = self.start
        while True:
            if self.uses(step):
                generator = np.random.default_rng(derive_seed(self.seed, self.name, step, self.rank))
                for position in range(self.batch):
                    yield (
                        int(generator.integers(self.length)),
                        derive_seed(self.seed, self.name, step, self.rank, position),
                    )
            step += 1
