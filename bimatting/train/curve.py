"""The training curve as a picture: loss and held-out agreement against step (OpenCV only).

Top panel: training loss (log scale). Bottom panel: held-out pha mean |diff| against the teacher
(x1e3, left axis) and alpha > 0.5 IoU (right axis, 0..1).
"""

import math

import numpy as np

from bimatting.atomic import write_bytes

WIDTH, PANEL, MARGIN = 900, 260, 60
INK, GRID, BLUE, RED, GREEN = (30, 30, 30), (225, 225, 225), (200, 90, 20), (40, 40, 210), (40, 150, 40)


def _panel(image, top, xs, series, x_max, title):
    import cv2

    left, right, bottom = MARGIN, WIDTH - MARGIN, top + PANEL - 30
    cv2.rectangle(image, (left, top + 20), (right, bottom), INK, 1)
    cv2.putText(image, title, (left, top + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, INK, 1, cv2.LINE_AA)
    for k in range(5):  # step ticks
        x = left + (right - left) * k // 4
        cv2.line(image, (x, top + 21), (x, bottom - 1), GRID, 1)
        cv2.putText(image, f"{x_max * k / 4:.0f}", (x - 15, bottom + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, INK, 1)
    for points, colour, (lo, hi), label, side in series:
        if not points:
            continue
        span = (hi - lo) or 1.0
        pixels = [
            (
                int(left + (right - left) * x / max(x_max, 1)),
                int(bottom - (bottom - top - 20) * (min(max(y, lo), hi) - lo) / span),
            )
            for x, y in points
        ]
        cv2.polylines(image, [np.array(pixels, np.int32)], False, colour, 2, cv2.LINE_AA)
        tx = 6 if side == "left" else right + 4
        cv2.putText(image, f"{hi:.3g}", (tx, top + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1)
        cv2.putText(image, f"{lo:.3g}", (tx, bottom), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1)
        cv2.putText(
            image,
            label,
            (tx if side == "left" else right - 150, top + 44 + (0 if side == "left" else 16)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            colour,
            1,
            cv2.LINE_AA,
        )


def write_curve(path, history):
    """history: [{'step', 'loss', 'heldout_pha_mad', 'heldout_iou'}] -> PNG at `path` (atomic)."""
    import cv2

    x_max = max([row["step"] for row in history] or [1])
    loss = [(r["step"], math.log10(r["loss"])) for r in history if r.get("loss")]
    mad = [(r["step"], r["heldout_pha_mad"] * 1e3) for r in history if r.get("heldout_pha_mad") is not None]
    iou = [(r["step"], r["heldout_iou"]) for r in history if r.get("heldout_iou") is not None]
    image = np.full((2 * PANEL + 20, WIDTH, 3), 255, np.uint8)
    loss_range = (min(y for _, y in loss), max(y for _, y in loss)) if loss else (0, 1)
    _panel(image, 0, None, [(loss, BLUE, loss_range, "log10 loss", "left")], x_max, "training loss (log10) vs step")
    mad_range = (0.0, max([y for _, y in mad] or [1.0]))
    _panel(
        image,
        PANEL,
        None,
        [(mad, RED, mad_range, "pha MAD x1e3", "left"), (iou, GREEN, (0.0, 1.0), "IoU alpha>0.5", "right")],
        x_max,
        "held-out agreement with the teacher vs step",
    )
    ok, encoded = cv2.imencode(".png", image)
    write_bytes(path, encoded.tobytes())
