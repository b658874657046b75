"""Score a prediction tree against a ground-truth tree, aggregated as RVM's evaluators do.

Frames are read as the official evaluators read them: uint8 files through OpenCV, divided by 255
(alpha as grayscale, foreground as colour; BGR order does not matter, channels are pooled).

Aggregation (RVM's xlsx summary): for every frame index, average the metric over all clips
(motion and static pooled, a clip counts only for the indices it has), then average those
per-index means. With equal-length clips this is the plain mean over all frames.
One deliberate difference: fgr metrics of a frame whose true alpha is 0 everywhere are NaN and
are left out of the averages (the official evaluators would turn the whole summary into NaN).
"""

import csv
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from bimatting.atomic import atomic_path
from bimatting.errors import InputError
from bimatting.eval.metrics import HR_METRICS, LR_METRICS, frame_metrics
from bimatting.eval.tree import match_trees


@dataclass
class ClipScores:
    clip: object  # bimatting.eval.tree.Clip
    frames: list  # frame file names
    per_frame: dict = field(default_factory=dict)  # metric -> [value per frame]

    def mean(self, metric):
        values = np.asarray(self.per_frame[metric], dtype=np.float64)
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


@dataclass
class Evaluation:
    metrics: tuple  # names, in report order
    clips: list  # [ClipScores]
    summary: dict  # metric -> aggregated value
    hr: bool = False

    def clip_rows(self):
        """One dict per clip: subset, clip, frames and each metric's mean over the clip."""
        return [
            {
                "subset": c.clip.subset,
                "clip": c.clip.name,
                "frames": len(c.frames),
                **{m: c.mean(m) for m in self.metrics},
            }
            for c in self.clips
        ]

    def write_csv(self, path):
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["subset", "clip", "frames", *self.metrics])
            writer.writeheader()
            for row in self.clip_rows():
                writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


def read_alpha(path):
    """uint8 image -> float32 [H, W] in [0, 1] (grayscale, as cv2.IMREAD_GRAYSCALE)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InputError(f"cannot read alpha '{path}'; expected an 8-bit PNG or JPEG")
    return image.astype(np.float32) / 255


def read_colour(path):
    """uint8 image -> float32 [H, W, 3] in [0, 1] (OpenCV's BGR order)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read foreground '{path}'; expected an 8-bit PNG or JPEG")
    return image.astype(np.float32) / 255


def score_clip(clip, names, has_fgr, pred_root, true_root, *, hr=False, on_frame=None):
    """ClipScores of one clip; frame 0's dtSSD is 0 (no previous frame), as the evaluators."""
    scores = ClipScores(clip, list(names))
    prev = None
    for name in names:
        pred_pha = read_alpha(clip.folder(pred_root, "pha") / name)
        true_pha = read_alpha(clip.folder(true_root, "pha") / name)
        _check_shapes(clip, name, pred_pha, true_pha)
        pred_fgr = true_fgr = None
        if has_fgr:
            pred_fgr = read_colour(clip.folder(pred_root, "fgr") / name)
            true_fgr = read_colour(clip.folder(true_root, "fgr") / name)
            _check_shapes(clip, f"fgr/{name}", pred_fgr, true_fgr)
            if true_fgr.shape[:2] != true_pha.shape:
                raise InputError(f"truth '{clip.key}/{name}': fgr and pha sizes differ")
        for metric, value in frame_metrics(pred_pha, true_pha, pred_fgr, true_fgr, prev=prev, hr=hr).items():
            scores.per_frame.setdefault(metric, []).append(value)
        prev = (pred_pha, true_pha)
        if on_frame is not None:
            on_frame()
    return scores


def _check_shapes(clip, name, pred, true):
    if pred.shape != true.shape:
        raise InputError(
            f"prediction '{clip.key}/{name}' is {pred.shape[1]}x{pred.shape[0]}, the truth "
            f"{true.shape[1]}x{true.shape[0]}; predict at the resolution of the evaluation set"
        )


def aggregate(clips, metric):
    """Per-frame-index mean over clips, then the mean of those (see module docstring)."""
    length = max(len(c.per_frame[metric]) for c in clips)
    table = np.full((len(clips), length), np.nan)  # [clips, frame index]
    for row, c in zip(table, clips):
        row[: len(c.per_frame[metric])] = c.per_frame[metric]
    filled = np.isfinite(table).any(axis=0)
    if not filled.any():
        return math.nan
    per_index = np.nanmean(table[:, filled], axis=0)
    return float(per_index.mean())


def evaluate(pred_root, true_root, hr=False, workers=1, progress=True):
    """Evaluation of `pred_root` against `true_root` (both in RVM's layout, see bimatting.eval.tree).

    hr=True follows evaluate_hr.py: no Conn, no fgrMAD, Grad without min-max normalisation.
    """
    pairs = match_trees(pred_root, true_root)
    total = sum(len(names) for _, names, _ in pairs)

    with tqdm(total=total, desc="evaluate", unit="frame", disable=not progress) as bar:

        def run(pair):
            clip, names, has_fgr = pair
            return score_clip(clip, names, has_fgr, pred_root, true_root, hr=hr, on_frame=lambda: bar.update(1))

        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:  # cv2/numpy release the GIL
                clips = list(pool.map(run, pairs))
        else:
            clips = [run(pair) for pair in pairs]
    names = HR_METRICS if hr else LR_METRICS
    metrics = tuple(m for m in names if all(m in c.per_frame for c in clips))
    summary = {m: aggregate(clips, m) for m in metrics}
    return Evaluation(metrics=metrics, clips=clips, summary=summary, hr=hr)
