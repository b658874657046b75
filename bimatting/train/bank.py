"""In-memory training data for distillation, kept on the training device, batches made there.

Everything is decoded once at start-up (uint8 tensors on the device): no loader can become the
bottleneck. Three kinds of samples, each a clip {'src', 'fgr', 'pha'} [T, C, H, W] in [0, 1]:

    footage      real frames; fgr/pha are the teacher's outputs on the whole frame (precomputed
                 over each clip with recurrent state), viewed through the same moving crop
    recomposite  the teacher's fgr/pha of one clip over the frames of another as background:
                 the target is the layer over the teacher's matte of the background footage
                 (alpha a + (1 - a) * a_bg), since that footage shows people too
    procedural   soft-edged procedural figures (bimatting.data.procedural) over real frames

Views: one affine crop per frame (zoom, rotation, translation, flip), interpolated linearly
between two random draws over the T frames -- camera motion on clips, pseudo-motion on stills --
and applied with F.grid_sample (bilinear, reflection padding).
"""

import math
import random

import torch
from torch.nn import functional as F

from bimatting.data import colour
from bimatting.data.sampler import frame_indices, window_offsets
from bimatting.train.settings import DistillOptions as RUN


class Item:
    """One clip (or still, N = 1): frames [N,3,h,w] uint8 + teacher fgr [N,3,h,w] / pha [N,1,h,w]."""

    def __init__(self, name, frames, fgr=None, pha=None):
        self.name, self.frames, self.fgr, self.pha = name, frames, fgr, pha

    def __len__(self):
        return self.frames.shape[0]


def view_thetas(rng, length, in_h, in_w, out_h, out_w, *, zoom, degrees=4.0, motion=0.15):
    """[T, 2, 3] affine_grid matrices: output crop -> input, moving linearly from one random view
    towards another (`motion` = how far it gets by the last frame).

    z = input pixels per output pixel: the 'cover' scale min(in_w/out_w, in_h/out_h) times U(zoom);
    zoom > 1 looks past the frame's short side (reflection fills the rest, and rotation corners), so
    people also appear small, as in wide shots; the crop centre stays inside the input.
    """
    cover = min(in_w / out_w, in_h / out_h)
    flip = -1.0 if rng.random() < 0.5 else 1.0

    def draw():
        z = cover * rng.uniform(*zoom)
        room_x, room_y = max(0.0, (in_w - z * out_w) / 2), max(0.0, (in_h - z * out_h) / 2)
        return (
            z,
            math.radians(rng.uniform(-degrees, degrees)),
            rng.uniform(-room_x, room_x),
            rng.uniform(-room_y, room_y),
        )

    start = draw()
    end = [a + (b - a) * motion for a, b in zip(start, draw())]
    thetas = []
    for t in range(length):
        f = t / max(length - 1, 1)
        z, angle, tx, ty = (a + (b - a) * f for a, b in zip(start, end))
        c, s = math.cos(angle), math.sin(angle)
        thetas.append(
            [
                [flip * z * c * out_w / in_w, -z * s * out_h / in_w, 2 * tx / in_w],
                [flip * z * s * out_w / in_h, z * c * out_h / in_h, 2 * ty / in_h],
            ]
        )
    return torch.tensor(thetas, dtype=torch.float32)


def warp(images, thetas, out_h, out_w):
    """[T, C, h, w] (float) -> [T, C, out_h, out_w] through per-frame affine crops."""
    grid = F.affine_grid(
        thetas.to(images.device), (images.shape[0], images.shape[1], out_h, out_w), align_corners=False
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def frame_window(rng, count, length):
    """`length` frame indices of a clip of `count` frames: random start, speed 1 (2/3) or 2, maybe
    reversed, wrapped modulo `count`. A still (count 1) repeats its frame and draws nothing."""
    if count == 1:
        return [0] * length
    return frame_indices(0, window_offsets(rng, length, speeds=(1, 1, 2), shifts=count), count)


def recolour(images, rng, strength=0.3, hue_turns=0.15, grey_share=0.1):
    """The same random colour change of every tensor in `images` ([..., 3, H, W] in [0, 1]): with
    probability `grey_share` grey, else brightness, contrast about mid-grey and saturation factors
    1 + U(-strength, strength) and a hue rotation of U(-hue_turns, hue_turns) turns.

    Pixelwise only (contrast blends with a fixed 0.5, not the image mean) so the frames and the
    teacher's foreground change alike and the foreground target stays the layer of the new frames.
    Ranges are this project's choice, near RVM's training jitter."""
    if rng.random() < grey_share:
        return [colour.grayscale(image) for image in images]
    brightness, contrast, saturation = (1 + rng.uniform(-strength, strength) for _ in range(3))
    hue = rng.uniform(-hue_turns, hue_turns)
    changed = []
    for image in images:
        image = colour.adjust_brightness(image, brightness)
        image = (contrast * image + (1 - contrast) * 0.5).clamp(0, 1)
        image = colour.adjust_saturation(image, saturation)
        changed.append(colour.adjust_hue(image, hue))
    return changed


def composite(fgr, pha, under):
    """[src, fgr, pha] of a teacher layer (fgr, pha) over `under` = (frames, fgr, pha) of other
    footage, whose people stay in the target beneath the layer:
        src = fgr a + bgr (1 - a),  alpha = a + (1 - a) a_bg,
        fgr = (fgr a + fgr_bg a_bg (1 - a)) / alpha  (fgr where alpha = 0)."""
    bgr, under_fgr, under_pha = under
    total = pha + (1 - pha) * under_pha
    fgr_total = (fgr * pha + under_fgr * under_pha * (1 - pha)) / total.clamp_min(1e-6)
    return [fgr * pha + bgr * (1 - pha), torch.where(total > 0, fgr_total, fgr), total]


class Bank:
    """The items of a distillation run and the batch maker.

    items: list of Item with teacher outputs (footage and stills); procedural: list of
    (fgr [T',3,H,W], pha [T',1,H,W]) uint8 clips; mix: probabilities of
    (footage, recomposite, procedural); zoom: the crop-scale range of view_thetas.
    """

    def __init__(
        self,
        items,
        procedural=(),
        mix=RUN.mix,
        seed=RUN.seed,
        zoom=RUN.zoom,
        still_weight=RUN.still_weight,
        background_tries=RUN.background_tries,
    ):
        self.items, self.procedural, self.zoom = list(items), list(procedural), tuple(zoom)
        self.background_tries = background_tries
        weights = [0.0 if not self.procedural and k == 2 else p for k, p in enumerate(mix)]
        self.mix = [w / sum(weights) for w in weights]
        # clips weigh by frame count, every still as `still_weight` frames
        self.item_weights = [len(item) if len(item) > 1 else still_weight for item in self.items]
        self.rng = random.Random(seed)

    def _pick(self):
        return self.rng.choices(self.items, weights=self.item_weights)[0]

    def _view(self, item, tensors, length, height, width):
        """Stack the item's tensors along C, take a moving crop of a frame window: [T, C, H, W]."""
        idx = frame_window(self.rng, len(item), length)
        stacked = torch.cat([t[idx] for t in tensors], dim=1).float().div_(255)
        thetas = view_thetas(
            self.rng,
            length,
            stacked.shape[-2],
            stacked.shape[-1],
            height,
            width,
            zoom=self.zoom,
            degrees=8.0 if len(item) == 1 else 4.0,
            motion=0.4 if len(item) == 1 else 0.15,
        )
        return warp(stacked, thetas, height, width)

    def sample(self, length, height, width):
        kind = self.rng.choices(("footage", "recomposite", "procedural"), weights=self.mix)[0]
        if kind == "footage":
            item = self._pick()
            view = self._view(item, (item.frames, item.fgr, item.pha), length, height, width)
            return {"src": view[:, :3], "fgr": view[:, 3:6], "pha": view[:, 6:7]}
        if kind == "recomposite":
            item = self._pick()
            layer = self._view(item, (item.fgr, item.pha), length, height, width)
            fgr, pha = layer[:, :3], layer[:, 3:4]
        else:
            fgr_clip, pha_clip = self.procedural[self.rng.randrange(len(self.procedural))]
            layer = self._view(Item("procedural", fgr_clip), (fgr_clip, pha_clip), length, height, width)
            fgr, pha = layer[:, :3], layer[:, 3:4]
        # The background is footage of people too: the teacher's matte of it stays in the target,
        # under the new layer (otherwise half the batches would teach that people are background).
        # Of `background_tries` draws the view with the least foreground is kept: the footage is
        # mostly people close up, and a new layer over them would leave little background to learn.
        under = min(
            (self._background_view(length, height, width) for _ in range(self.background_tries)),
            key=lambda view: float(view[:, 6:7].mean()),
        )
        src, fgr_total, total = composite(fgr, pha, (under[:, :3], under[:, 3:6], under[:, 6:7]))
        return {"src": src, "fgr": fgr_total, "pha": total}

    def _background_view(self, length, height, width):
        background = self._pick()
        return self._view(background, (background.frames, background.fgr, background.pha), length, height, width)

    def crops(
        self, size, length, height, width, still_share=0.0, colour_share=0.0, scale=(1.0, 1.0), recomposite_share=0.0
    ):
        """{'src', 'fgr', 'pha'} [B, T, C, H, W]: plain crops of the clips and, with `still_share`
        > 0, of the stills.

        Each of the `size` samples: with probability `still_share` a still drawn uniformly and held
        for the `length` frames (a static camera), otherwise a clip drawn uniformly and `length`
        consecutive frames from a random start; one height x width window at the footage's own scale
        (no resampling, so the people keep the size they have in footage decoded at the evaluation
        scale; footage smaller than the window is scaled up to cover it), flipped with p = 0.5.
        The recipe that learnt people on held-out footage within ten CPU-minutes used exactly these
        (training/README.md); the moving, zooming views of `batch` did not transfer. Stills add
        scenes: a clip shows one room, the photos a hundred. With probability `colour_share` a sample's
        src and target fgr go through the same pixelwise colour change (`recolour`): alpha does not
        depend on colour, and the model must not learn that warm wood is a person. With `scale` other
        than (1, 1), each sample's footage is first resized by a factor drawn uniformly from that
        range (antialiased): below 1 a window holds more of the room and smaller people, the whole
        frame's context the held-out footage is matted with. With probability `recomposite_share`
        the sample's teacher layer (fgr, pha) goes over a crop of another draw, the least covered of
        `background_tries` (`composite`): the same person in front of other rooms, so a room's
        colours stop saying where the person is."""
        clips = [item for item in self.items if len(item) >= length]
        stills = [item for item in self.items if len(item) == 1] if still_share else []

        def draw():
            if stills and self.rng.random() < still_share:
                return self._plain_crop(self.rng.choice(stills), [0] * length, height, width, scale)
            item = self.rng.choice(clips)
            start = self.rng.randrange(len(item) - length + 1)
            return self._plain_crop(item, list(range(start, start + length)), height, width, scale)

        samples = []
        for _ in range(size):
            views = draw()
            if recomposite_share and self.rng.random() < recomposite_share:
                under = min((draw() for _ in range(self.background_tries)), key=lambda v: float(v[2].mean()))
                views = composite(views[1], views[2], under)
            if colour_share and self.rng.random() < colour_share:
                views[:2] = recolour(views[:2], self.rng)
            samples.append(views)
        return {key: torch.stack([s[k] for s in samples]) for k, key in enumerate(("src", "fgr", "pha"))}

    def _plain_crop(self, item, indices, height, width, scale):
        """[frames, fgr, pha] of `indices`: one window at the footage's scale (or resized by a
        factor drawn from `scale`), flipped with p = 0.5."""
        views = [tensor[indices].float().div_(255) for tensor in (item.frames, item.fgr, item.pha)]
        h, w = views[0].shape[-2:]
        factor = 1.0 if scale == (1.0, 1.0) else self.rng.uniform(*scale)
        factor = max(factor, height / h, width / w)  # footage smaller than the crop: scaled up to cover it
        if factor != 1.0:
            h, w = max(height, math.ceil(h * factor)), max(width, math.ceil(w * factor))
            views = [
                F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False, antialias=factor < 1) for v in views
            ]
        top, left = self.rng.randrange(h - height + 1), self.rng.randrange(w - width + 1)
        flip = self.rng.random() < 0.5
        views = [v[..., top : top + height, left : left + width] for v in views]
        return [view.flip(-1) if flip else view for view in views]

    def batch(self, size, length, height, width):
        """{'src', 'fgr', 'pha'} [B, T, C, H, W] float32 on the bank's device."""
        samples = [self.sample(length, height, width) for _ in range(size)]
        return {key: torch.stack([s[key] for s in samples]) for key in ("src", "fgr", "pha")}
