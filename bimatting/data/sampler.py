"""Frame samplers: which frame offsets a training sequence of T frames reads (RVM's rules).

TrainFrameSampler(T) -> offsets: offset_i = int(i * speed) + shift for i = 0..T-1, with
speed drawn from {0.5, 1, 2, 3, 4, 5}, shift uniform in [0, T), and the list reversed half of
the time. A dataset reads frame (start + offset) modulo its frame count, so short clips wrap.
ValidFrameSampler(T) -> 0..T-1.
`window_offsets` draws every random window: the datasets' TrainFrameSampler, the trainer's clip
sources (bimatting.train.sources) and the distillation bank (bimatting.train.bank) call it.
"""

import random

SPEEDS = (0.5, 1, 2, 3, 4, 5)


def window_offsets(rng, length, speeds=SPEEDS, shifts=None):
    """`length` frame offsets int(i * speed) + shift of a training window, reversed half of the time.

    rng: a random.Random or the `random` module. It is drawn in this order, which resumed training
    relies on: the speed's index randrange(len(speeds)), the shift randrange(shifts) (`shifts`
    defaults to `length`), then one random() that reverses the window below 0.5.
    """
    speed = speeds[rng.randrange(len(speeds))]
    shift = rng.randrange(length if shifts is None else shifts)
    offsets = [int(i * speed) + shift for i in range(length)]
    if rng.random() < 0.5:
        offsets.reverse()
    return offsets


class TrainFrameSampler:
    def __init__(self, speeds=SPEEDS, rng=None):
        self.speeds = tuple(speeds)
        self.rng = rng if rng is not None else random

    def __call__(self, length):
        return window_offsets(self.rng, length, self.speeds)


class ValidFrameSampler:
    def __call__(self, length):
        return list(range(length))


def frame_indices(start, offsets, count):
    """Frame numbers read for a sequence starting at `start` of a clip with `count` frames."""
    return [(start + offset) % count for offset in offsets]
