"""The distillation batch maker: its knobs move the foreground share of the batches as documented.

Synthetic items (no footage needed): a clip whose teacher matte covers the left half of the
frame, a still whose matte covers all of it, and a centred square figure.
"""
import random

import numpy as np
import torch

from bimatting.train.bank import Bank, Item, view_thetas, warp


def _item(name, count, pha):
    h, w = pha.shape
    frames = torch.randint(0, 256, (count, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    matte = torch.from_numpy(np.uint8(pha * 255))[None, None].expand(count, 1, h, w).contiguous()
    return Item(name, frames, frames.clone(), matte)


def _half_covered(count=6):
    pha = np.zeros((72, 128))
    pha[:, :64] = 1
    return _item("half", count, pha)


def _foreground(bank, kind, samples=60):
    bank.mix = {"footage": [1, 0, 0], "recomposite": [0, 1, 0]}[kind]
    return float(np.mean([bank.sample(2, 32, 32)["pha"].mean() for _ in range(samples)]))


def test_recomposites_go_over_the_least_covered_of_several_background_views():
    layer = _item("layer", 6, np.pad(np.ones((24, 24)), ((24, 24), (52, 52))))
    one = _foreground(Bank([_half_covered(), layer], mix=(0, 1, 0), seed=1, background_tries=1), "recomposite")
    three = _foreground(Bank([_half_covered(), layer], mix=(0, 1, 0), seed=1, background_tries=3), "recomposite")
    assert three < one - 0.1, (one, three)


def test_still_weight_sets_how_often_a_still_is_drawn():
    clip, still = _half_covered(count=6), _item("still", 1, np.ones((72, 128)))
    for weight, expected in ((2, 2 / 8), (6, 6 / 12)):
        bank = Bank([clip, still], mix=(1, 0, 0), seed=2, still_weight=weight)
        picks = [bank._pick().name for _ in range(2000)]
        assert abs(picks.count("still") / len(picks) - expected) < 0.04, (weight, picks.count("still"))


def test_zoom_past_one_shows_the_whole_frame_smaller():
    """zoom 1.6 maps the output onto 1.6x the frame's short side: a centred square of side 1/4 of
    the frame height covers (1/4 / 1.6)^2 of a square output (reflection copies fall outside)."""
    pha = torch.zeros(1, 1, 96, 160)
    pha[..., 36:60, 68:92] = 1                                         # 24 x 24, centred
    rng = random.Random(0)
    covered = {}
    for zoom in (1.0, 1.6):
        thetas = view_thetas(rng, 1, 96, 160, 64, 64, zoom=(zoom, zoom), degrees=0.0, motion=0.0)
        thetas[..., 2] = 0                                              # centred crop
        covered[zoom] = float(warp(pha, thetas, 64, 64).mean())
    assert abs(covered[1.0] - (24 / 96) ** 2) < 0.01, covered
    assert abs(covered[1.6] - (24 / 96 / 1.6) ** 2) < 0.01, covered
