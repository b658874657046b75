"""Training data sources the trainer can use, and the check of a data root.

    CompositeClips   clips in RVM's evaluation layout <set>/videomatte_*/<clip>/{com,fgr,pha}
                     (e.g. written by `bimatting data synth`): the composite is given, so a
                     sample is {src, fgr, pha} [T, C, S, S]
    FootageClips     unlabelled footage (frame folders, videos, stills) for distillation: {src}

Samples are dicts of float32 tensors [T, C, S, S] in [0, 1] (S = the pass's square size); the
DataLoader stacks them to [B, T, C, S, S] and the trainer makes the final random crop.
All randomness comes from Python's `random` (seeded per sample by sampling.SeededDataset).
"""

import math
import random
from pathlib import Path

from torch.utils.data import Dataset

from bimatting.data.sampler import frame_indices, window_offsets
from bimatting.errors import InputError
from bimatting.matting.frames import IMAGE_SUFFIXES, VIDEO_SUFFIXES, iter_frames_uint8, list_images, read_image_uint8
from bimatting.train import clips

EVAL_LAYERS = ("com", "fgr", "pha")


# -- the evaluation layout ---------------------------------------------------------------------


def find_eval_clips(root):
    """Clip folders of an evaluation-layout set under `root` (root = <set> or its parent), sorted.

    [] when root holds no videomatte_* folder; InputError naming the first missing layer folder
    (com/fgr/pha) of a clip, or a subset without clips.
    """
    root = Path(root)
    subsets = sorted(root.glob("videomatte_*")) or sorted(root.glob("*/videomatte_*"))
    subsets = [s for s in subsets if s.is_dir()]
    found = []
    for subset in subsets:
        clip_dirs = sorted(p for p in subset.iterdir() if p.is_dir())
        if not clip_dirs:
            raise InputError(
                f"evaluation-layout subset '{subset}' holds no clip folders; "
                "expected <set>/videomatte_*/<clip>/{com,fgr,pha}/NNNN.png"
            )
        for clip in clip_dirs:
            for layer in EVAL_LAYERS:
                if not (clip / layer).is_dir():
                    raise InputError(
                        f"missing folder '{clip / layer}'; every clip of an evaluation-layout "
                        "set needs com/, fgr/ and pha/ frame folders"
                    )
        found += clip_dirs
    return found


class CompositeClips(Dataset):
    """T-frame windows of evaluation-layout clips: {'src', 'fgr', 'pha'} [T, C, size, size].

    One window per ceil(frames / T) of each clip (RVM's VideoMatte length); each draws RVM's
    speed/shift/reverse frame sampling, a random square crop (short side scaled to size*U(1,1.25))
    and a horizontal flip with p = 0.5. `cache` keeps every decoded frame in memory.
    """

    def __init__(self, clip_dirs, length, size, cache=False):
        self.length, self.size = length, size
        self.clips = []
        for clip in clip_dirs:
            names = [p.name for p in list_images(Path(clip) / "pha")]
            for layer in ("com", "fgr"):
                missing = [n for n in names if not (Path(clip) / layer / n).is_file()]
                if missing:
                    raise InputError(
                        f"'{Path(clip) / layer}' lacks frame {missing[0]} that pha/ has; "
                        "every layer needs the same frame names"
                    )
            self.clips.append((Path(clip), names))
        self.windows = [(c, start) for c, (_, names) in enumerate(self.clips) for start in range(0, len(names), length)]
        self._cache = {} if cache else None

    def __len__(self):
        return len(self.windows)

    def _read(self, clip, layer, name):
        import cv2  # noqa: PLC0415 - OpenCV loads on first use

        key = (clip, layer, name)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        flag = cv2.IMREAD_GRAYSCALE if layer == "pha" else cv2.IMREAD_COLOR
        image = cv2.imread(str(clip / layer / name), flag)
        if image is None:
            raise InputError(f"cannot read '{clip / layer / name}'; expected an image file")
        image = image[..., None] if layer == "pha" else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self._cache is not None:
            self._cache[key] = image
        return image

    def __getitem__(self, index):
        clip_index, start = self.windows[index]
        clip, names = self.clips[clip_index]
        frames = frame_indices(start, window_offsets(random, self.length), len(names))  # RVM's sampler
        first = self._read(clip, "pha", names[frames[0]])
        box = clips.square_crop_box(first.shape[0], first.shape[1], self.size)
        flip = random.random() < 0.5
        sample = {}
        for key, layer in (("src", "com"), ("fgr", "fgr"), ("pha", "pha")):
            views = [clips.crop_resize(self._read(clip, layer, names[f]), self.size, box, flip) for f in frames]
            sample[key] = clips.frames_to_float_tensor(views)
        return sample


# -- unlabelled footage -------------------------------------------------------------------------


def _is_sequence(files):
    """A folder of frames (all stems numeric, e.g. 00000.jpg) rather than unrelated stills."""
    return len(files) > 1 and all(p.stem.isdigit() for p in files)


def find_footage(paths, depth=2):
    """(clips, stills) under `paths`: clips are videos or numbered-frame folders, stills are other
    images. Folders are searched `depth` levels down (a folder of clip folders works)."""
    clip_sources, stills = [], []

    def visit(path, level):
        if path.is_file():
            if path.suffix.lower() in VIDEO_SUFFIXES:
                clip_sources.append(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                stills.append(path)
            return
        if not path.is_dir():
            raise InputError(f"unlabelled footage '{path}' does not exist; give frame folders, videos or images")
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if _is_sequence(images):
            clip_sources.append(path)
        else:
            stills.extend(images)
        for child in sorted(path.iterdir()):
            if child.is_file() and child.suffix.lower() in VIDEO_SUFFIXES:
                clip_sources.append(child)
            elif child.is_dir() and level < depth:
                visit(child, level + 1)

    for path in paths:
        visit(Path(path), 0)
    if not clip_sources and not stills:
        raise InputError(
            f"no footage found under {', '.join(str(p) for p in paths)}; "
            "expected frame folders (00000.jpg, ...), video files or images"
        )
    return clip_sources, stills


def resize_short_side(image, short_side):
    """uint8 [H,W,3] with the short side resized to `short_side` (area filter when shrinking)."""
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


class FootageClips(Dataset):
    """Unlabelled footage as T-frame windows {'src': [T, 3, size, size]}, decoded into memory once.

    Clips give one window per ceil(frames / T) (RVM's frame sampling, random crop, flip); every
    still is one sample, animated by a smooth random pan/zoom (clips.drift_clip).
    max_frames caps the frames read per clip (memory).
    """

    def __init__(self, paths, length, size, max_frames=300):
        self.length, self.size = length, size
        clip_sources, still_paths = find_footage(paths)
        short_side = math.ceil(size * 1.25)
        self.clips = [
            [resize_short_side(f, short_side) for f in iter_frames_uint8(src, limit=max_frames)] for src in clip_sources
        ]
        self.stills = [resize_short_side(read_image_uint8(path), short_side) for path in still_paths]
        self.items = [
            ("clip", c, start) for c, frames in enumerate(self.clips) for start in range(0, len(frames), length)
        ]
        self.items += [("still", s, 0) for s in range(len(self.stills))]
        self.sources = [str(p) for p in clip_sources + still_paths]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        kind, which, start = self.items[index]
        flip = random.random() < 0.5
        if kind == "still":
            views = clips.drift_clip(self.stills[which], self.length, self.size)
            views = [v[:, ::-1] for v in views] if flip else views
        else:
            frames = self.clips[which]
            box = clips.square_crop_box(frames[0].shape[0], frames[0].shape[1], self.size)
            views = [
                clips.crop_resize(frames[f], self.size, box, flip)
                for f in frame_indices(start, window_offsets(random, self.length), len(frames))
            ]
        return {"src": clips.frames_to_float_tensor(views)}


# -- what a data root provides ------------------------------------------------------------------


class Sources(dict):
    """{pass name: Dataset} ('lr', optional 'hr', 'seg_video', 'seg_image', 'unlabelled') + notes."""

    def __init__(self, *args, notes=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.notes = list(notes)


def build_sources(options, config):
    """The datasets of one stage from `options.data_root` (+ unlabelled footage); checks the root.

    An evaluation-layout set is used for both matting passes. Otherwise the root must hold RVM's
    training layout (see `real_sources`); InputError names the first missing folder.
    """
    root = Path(options.data_root)
    if not root.is_dir():
        raise InputError(
            f"data root '{root}' does not exist; expected RVM's training layout or an "
            "evaluation-layout set (<set>/videomatte_*/<clip>/{com,fgr,pha})"
        )
    clip_dirs = find_eval_clips(root)
    if clip_dirs:
        data = Sources(
            lr=CompositeClips(clip_dirs, config.seq_lr, config.size_lr, options.cache_frames),
            notes=[f"data: {len(clip_dirs)} evaluation-layout clips under {root} (composites given)"],
        )
        if config.seq_hr > 0:
            data["hr"] = CompositeClips(clip_dirs, config.seq_hr, config.size_hr, options.cache_frames)
    else:
        data = real_sources(root, config)
    if options.unlabelled:
        data["unlabelled"] = FootageClips(options.unlabelled, config.seq_lr, config.size_lr)
        data.notes.append(
            f"unlabelled: {len(data['unlabelled'])} samples from {len(data['unlabelled'].sources)} sources"
        )
    return data


def real_sources(root, config):
    """RVM's training sets under `root` (layout and readers: bimatting.data)."""
    try:
        from bimatting.data import training  # noqa: PLC0415 - an optional part (InputError without it)
    except ImportError:
        training = None
    if training is None:
        missing = root / f"VideoMatte240K_JPEG_{config.videomatte_variant}" / "train" / "fgr"
        raise InputError(
            f"data root '{root}' is not an evaluation-layout set (no videomatte_* folder) and "
            f"RVM's training layout is not readable here (first expected folder: '{missing}'); "
            "write one with `bimatting data synth` or give <set>/videomatte_*/<clip>/{com,fgr,pha}"
        )
    return training.stage_sources(root, config, Sources)
