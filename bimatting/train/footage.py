"""Footage for distillation: decoded once into memory, the teacher's outputs computed once.

    training clips   frame folders / videos / stills, decoded to at most `short_side`; each gets
                     the teacher's fgr/pha over the whole clip with recurrent state (stills: one
                     frame), cached beside the run so a resumed run does not recompute them
    held-out clips   footage never trained on, at the evaluation size (long side `eval_long_side`),
                     with the teacher's outputs at that size, for the agreement curve

A held-out spec is a path, or `path@start:stop` for a frame range of a clip (e.g. the last 64
frames of a 200-frame folder: `bedroom/frames@136:200`); its frames outside the range may still be
trained on only if the spec names a range and the training list names the same path (they are
then cut out of the training copy).
"""

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bimatting.errors import InputError
from bimatting.eval.agreement import run_recurrent
from bimatting.matting.frames import IMAGE_SUFFIXES, iter_frames_uint8, resolve_clip
from bimatting.train.bank import Item
from bimatting.train.clips import frames_to_uint8_tensor
from bimatting.train.sources import find_footage


def parse_heldout(spec):
    """'path' or 'path@start:stop' -> (Path, start, stop or None)."""
    match = re.fullmatch(r"(.+?)@(\d*):(\d*)", str(spec))
    if not match:
        return resolve_clip(spec), 0, None
    path, start, stop = match.groups()
    return resolve_clip(path), int(start or 0), int(stop) if stop else None


@torch.no_grad()
def teacher_outputs(teacher, frames, chunk=16):
    """(fgr, pha) uint8 of the teacher over a clip uint8 [N, 3, h, w], states carried."""
    fgr, pha = run_recurrent(teacher, frames, 1.0, chunk)
    return _to_uint8(fgr), _to_uint8(pha)


def _to_uint8(x):
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def cached(cache_dir, key, compute):
    """compute() -> tuple of tensors, stored under cache_dir/<sha of key>.pt."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".pt")
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def _same(a, b):
    return Path(a).resolve() == Path(b).resolve()


def load_training_items(footage, images, heldout, teacher, *, short_side, max_frames, cache_dir=None, workers=2):
    """[Item] with teacher targets for every training clip and still, minus the held-out frames."""
    clip_sources, stills = find_footage(footage)
    for folder in images:
        if not Path(folder).is_dir():
            raise InputError(f"--images '{folder}' is not a folder of images")
        stills += sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    held = [parse_heldout(spec) for spec in heldout]
    items = []

    def load(source, still):
        cut = next(((start, stop) for path, start, stop in held if _same(path, source)), None)
        if cut is not None and cut == (0, None):
            return None  # the whole clip is held out
        key = f"{Path(source).resolve()}|{short_side}|{max_frames}|{cut}|teacher-v1"

        def compute():
            # a held-out range: only the frames before it are trained on
            limit = 1 if still else min(max_frames, cut[0]) if cut else max_frames
            if limit == 0:
                raise InputError(
                    f"'{source}' is held out from frame 0; no frames before its range are left "
                    "to train on (hold out a later range, or leave it out of the training footage)"
                )
            frames = frames_to_uint8_tensor(list(iter_frames_uint8(source, limit=limit, short_side=short_side)))
            return (frames, *teacher_outputs(teacher, frames))

        frames, fgr, pha = cached(cache_dir, key, compute)
        return Item(Path(source).name, frames, fgr, pha) if len(frames) else None

    jobs = [(s, False) for s in clip_sources] + [(s, True) for s in stills]
    with ThreadPoolExecutor(workers) as pool:
        for item in pool.map(lambda job: load(*job), jobs):
            if item is not None:
                items.append(item)
    return items


def load_heldout(specs, teacher, long_side, frames_per_clip, cache_dir=None):
    """[(name, frames uint8 [N,3,h,w])] and [(fgr, pha) float32] of the teacher, at the eval size."""
    clips, outputs = [], []
    for spec in specs:
        path, start, stop = parse_heldout(spec)
        key = f"heldout|{path.resolve()}|{start}|{stop}|{long_side}|{frames_per_clip}|teacher-v2"

        def compute():
            limit = stop or start + frames_per_clip
            frames = list(iter_frames_uint8(path, limit=limit, long_side=long_side))[start:stop]
            frames = frames_to_uint8_tensor(frames[:frames_per_clip])
            return (frames, *run_recurrent(teacher, frames, 1.0, 16))

        frames, fgr, pha = cached(cache_dir, key, compute)
        if len(frames) == 0:
            raise InputError(f"held-out '{spec}' has no frames in that range")
        name = path.parent.name if path.name == "frames" or path.is_file() else path.name
        clips.append((name + (f"@{start}:{stop or ''}" if (start or stop) else ""), frames))
        outputs.append((fgr, pha))
    return clips, outputs
