"""Frame samplers: which frame offsets a training sequence of T frames reads (RVM's rules).

TrainFrameSampler(T) -> offsets: offset_i = int(i * speed) + shift for i = 0..T-1, with
speed drawn from {0.5, 1, 2, 3, 4, 5}, shift uniform in [0, T), and the list reversed half of
the time. A dataset reads frame (start + offset) modulo its frame count, so short clips wrap.
ValidFrameSampler(T) -> 0..T-1.
"""
import random

SPEEDS = (0.5, 1, 2, 3, 4, 5)


class TrainFrameSampler:
    def __init__(self, speeds=SPEEDS, rng=None):
        self.speeds = tuple(speeds)
        self.rng = rng if rng is not None else random

    def __call__(self, length):
        speed = self.speeds[self.rng.randrange(len(self.speeds))]
        shift = self.rng.randrange(length)
        offsets = [int(i * speed) + shift for i in range(length)]
        if self.rng.random() < 0.5:
            offsets.reverse()
        return offsets


class ValidFrameSampler:
    def __call__(self, length):
        return list(range(length))


def frame_indices(start, offsets, count):
    """Frame numbers read for a sequence starting at `start` of a clip with `count` frames."""
    return [(start + offset) % count for offset in offsets]
