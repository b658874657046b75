"""The distillation batch maker: its knobs move the foreground share of the batches as documented.

Synthetic items (no footage needed): a clip whose teacher matte covers the left half of the
frame, a still whose matte covers all of it, and a centred square figure.
"""

import random

import numpy as np
import torch

from bimatting.train.bank import Bank, Item, recolour, view_thetas, warp


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
    pha[..., 36:60, 68:92] = 1  # 24 x 24, centred
    rng = random.Random(0)
    covered = {}
    for zoom in (1.0, 1.6):
        thetas = view_thetas(rng, 1, 96, 160, 64, 64, zoom=(zoom, zoom), degrees=0.0, motion=0.0)
        thetas[..., 2] = 0  # centred crop
        covered[zoom] = float(warp(pha, thetas, 64, 64).mean())
    assert abs(covered[1.0] - (24 / 96) ** 2) < 0.01, covered
    assert abs(covered[1.6] - (24 / 96 / 1.6) ** 2) < 0.01, covered


def _position_coded(count, h, w):
    """An item whose pixel values say where they are: frame t, row y, column x -> (t, y % 256, x % 256)."""
    t, y, x = torch.meshgrid(torch.arange(count), torch.arange(h), torch.arange(w), indexing="ij")
    frames = torch.stack([t, y % 256, x % 256], dim=1).to(torch.uint8)
    pha = (x % 256).to(torch.uint8)[:, None]
    return Item("coded", frames, frames.flip(1).contiguous(), pha)


def test_plain_crops_are_windows_of_consecutive_frames_at_the_footage_scale():
    bank = Bank([_position_coded(5, 72, 128), _item("still", 1, np.ones((72, 128)))], seed=3)
    for _ in range(20):
        batch = bank.crops(3, 2, 32, 48)
        assert batch["src"].shape == (3, 2, 3, 32, 48) and batch["pha"].shape == (3, 2, 1, 32, 48)
        for b in range(3):
            src = (batch["src"][b] * 255).round().long()
            assert (src[1, 0] - src[0, 0]).eq(1).all()  # consecutive frames
            rows, cols = src[0, 1, :, 0], src[0, 2, 0, :]
            assert (rows.diff() == 1).all()  # one pixel per pixel: no resampling
            assert (cols.diff().abs() == 1).all() and len(set(cols.diff().tolist())) == 1  # maybe flipped
            torch.testing.assert_close(batch["fgr"][b], batch["src"][b].flip(1))  # targets aligned
            torch.testing.assert_close(batch["pha"][b, :, 0], batch["src"][b, :, 2])


def test_plain_crops_cover_footage_smaller_than_the_crop():
    bank = Bank([_position_coded(3, 24, 40)], seed=0)
    batch = bank.crops(2, 2, 32, 48)
    assert batch["src"].shape == (2, 2, 3, 32, 48)


def test_crops_draw_stills_at_their_share_and_hold_them_still():
    """still_share = s: a share s of the samples are crops of a still repeated over the T frames
    (binomial, 600 draws: sd 0.02, so 0.05 is > 2 sd); s = 0 leaves the clip batches bit for bit
    what they were without stills in the bank."""
    still = _item("still", 1, np.ones((72, 128)))
    for share in (0.3, 1.0):
        bank = Bank([_position_coded(5, 72, 128), still], seed=4)
        kinds = []
        for _ in range(200):
            batch = bank.crops(3, 2, 32, 48, still_share=share)
            for b in range(3):
                static = torch.equal(batch["src"][b, 0], batch["src"][b, 1])
                from_still = bool(batch["pha"][b].eq(1).all())  # the still's matte covers it all
                assert static == from_still  # stills, and only stills, are held
                kinds.append(from_still)
        assert abs(np.mean(kinds) - share) < 0.05, (share, np.mean(kinds))
    with_still = Bank([_position_coded(5, 72, 128), still], seed=5)
    without = Bank([_position_coded(5, 72, 128)], seed=5)
    for _ in range(10):
        a, b = with_still.crops(2, 2, 32, 48), without.crops(2, 2, 32, 48)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_recolour_changes_frames_and_foreground_alike():
    """Pixelwise: where the frame is the foreground (alpha 1) the recoloured frame is the recoloured
    foreground, so the teacher's fgr stays the target; the change is not the identity."""
    g = torch.Generator().manual_seed(0)
    fgr, bgr = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    pha = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    src = fgr * pha + bgr * (1 - pha)
    rng = random.Random(1)
    for _ in range(20):
        new_src, new_fgr = recolour([src, fgr], rng)
        inside = pha.expand_as(src).bool()
        assert torch.equal(new_src[inside], new_fgr[inside])
        assert (new_src - src).abs().mean() > 1e-3


def test_crops_recolour_at_their_share_and_leave_alpha():
    bank = Bank([_position_coded(5, 72, 128)], seed=6)
    changed = []
    for _ in range(150):
        a = bank.crops(2, 2, 32, 48, colour_share=0.5)
        assert a["src"].shape == (2, 2, 3, 32, 48)
        for b in range(2):
            src = (a["src"][b] * 255).round()
            changed.append(not bool((src[1, 0] - src[0, 0]).eq(1).all() and (src[0, 1].diff(dim=0) == 1).all()))
            cols = (a["pha"][b, 0, 0, 0] * 255).round()  # alpha still the position code
            assert (cols.diff().abs() == 1).all()
    assert abs(np.mean(changed) - 0.5) < 0.1, np.mean(changed)


def test_crop_scale_resizes_the_footage_before_the_window_is_cut():
    """The row code steps by 1 per row at the footage's scale; after a resize by s it steps by 1 / s
    inside the window (a linear ramp stays linear under antialiased bilinear resizing), in the
    frame and its matte alike."""
    bank = Bank([_position_coded(5, 72, 128)], seed=7)
    for _ in range(10):
        batch = bank.crops(2, 2, 32, 48, scale=(0.5, 0.5))
        rows = (batch["src"][:, :, 1] * 255).diff(dim=-2)[..., 4:-4, :]
        cols = (batch["pha"][:, :, 0] * 255).diff(dim=-1).abs()[..., 4:-4]
        assert (rows - 2).abs().max() < 0.02 and (cols - 2).abs().max() < 0.02, (rows.max(), cols.max())
    steps = []
    for _ in range(60):
        rows = bank.crops(1, 2, 32, 48, scale=(0.5, 1.0))["src"][0, 0, 1] * 255
        steps.append(float(rows.diff(dim=0)[8:-8].mean()))
    assert 1 - 1e-3 <= min(steps) < 1.15 and 1.8 < max(steps) <= 2 + 1e-3, (min(steps), max(steps))


def test_recomposited_crops_put_the_teacher_layer_over_other_footage():
    """Where the layer's alpha is 1 the frame is the layer's fgr; the target alpha is the layer's
    over the background's (a + (1 - a) a_bg >= a); at share 0 the crops are the plain ones."""
    person = np.zeros((72, 128))
    person[20:60, 40:90] = 1
    layered, recomposited = Bank([_item("person", 6, person), _half_covered()], seed=8), []
    for _ in range(100):
        batch = layered.crops(2, 2, 32, 48, recomposite_share=0.5)
        src, fgr, pha = batch["src"], batch["fgr"], batch["pha"]
        assert pha.min() >= 0 and pha.max() <= 1
        solid = pha.expand_as(src) == 1
        assert torch.allclose(src[solid], fgr[solid], atol=1e-6)
        for b in range(2):  # a plain crop's frame is random noise; a recomposite's half is flat
            recomposited.append(bool((src[b] - fgr[b]).abs().max() > 1e-6 and pha[b].mean() > 0))
    assert 0.2 < np.mean(recomposited) <= 0.6, np.mean(recomposited)
    plain, zero_share = Bank([_position_coded(5, 72, 128)], seed=9), Bank([_position_coded(5, 72, 128)], seed=9)
    for _ in range(10):
        a, b = plain.crops(2, 2, 32, 48), zero_share.crops(2, 2, 32, 48, recomposite_share=0.0)
        assert all(torch.equal(a[k], b[k]) for k in a)
