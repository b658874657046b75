"""A training batch as a picture: what the network is asked to learn, crop by crop.

One row per frame of each crop: the source, the target alpha, the target foreground (over grey
where alpha is 0, since fgr is undefined there) and the crop's foreground share (mean target
alpha) written on the source. Two earlier recipes failed from what their batches held (people in
recomposited backgrounds labelled background, textured procedural figures labelled foreground);
a grid shows that at a glance.
"""

from pathlib import Path

import numpy as np

from bimatting.atomic import atomic_path

GREY = 0.5
LABEL_SCALE = 0.4


def _rgb(tensor):
    # [C, H, W] float in [0, 1] -> uint8 [H, W, 3]
    image = tensor.detach().float().clamp(0, 1).numpy()
    image = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    return np.uint8(image.transpose(1, 2, 0) * 255 + 0.5)


def batch_rows(batch):
    """[(src, pha, fgr) uint8 [H, W, 3], share float] for every crop and frame of a batch
    {'src', 'fgr', 'pha'} [B, T, C, H, W]."""
    rows = []
    for b in range(batch["src"].shape[0]):
        share = float(batch["pha"][b].mean())
        for t in range(batch["src"].shape[1]):
            pha = batch["pha"][b, t]
            fgr = batch["fgr"][b, t] * (pha > 0) + GREY * (pha <= 0)
            rows.append(((_rgb(batch["src"][b, t]), _rgb(pha), _rgb(fgr)), share, b, t))
    return rows


def write_batch_grid(batch, path):
    """Write the grid PNG of `batch` to `path` (atomically); returns the foreground share per crop."""
    import cv2

    rows, shares, lines = batch_rows(batch), [], []
    for (src, pha, fgr), share, b, t in rows:
        src = src.copy()
        if t == 0:
            shares.append(share)
            cv2.putText(
                src,
                f"crop {b} fg {share:.0%}",
                (3, 12),
                cv2.FONT_HERSHEY_SIMPLEX,
                LABEL_SCALE,
                (255, 255, 0),
                1,
                cv2.LINE_AA,
            )
        gap = np.full((src.shape[0], 2, 3), 255, np.uint8)
        lines.append(np.concatenate([src, gap, pha, gap, fgr], axis=1))
        lines.append(np.full((2, lines[-1].shape[1], 3), 255, np.uint8))
    header = np.full((18, lines[0].shape[1], 3), 255, np.uint8)
    width = src.shape[1] + 2
    for k, title in enumerate(("source", "target pha", "target fgr")):
        cv2.putText(
            header, title, (k * width + 3, 13), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, (0, 0, 0), 1, cv2.LINE_AA
        )
    grid = np.concatenate([header, *lines], axis=0)
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write '{path}'")
    return shares
