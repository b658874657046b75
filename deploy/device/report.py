"""The bench report folder: bench.json, latency.png, alpha_preview.png (OpenCV + numpy drawing).

bench.json keys (deploy/bench.py builds them):
    device       {kind, address, key, isa}           where it ran (ISA probed over RPC)
    target       {name, isa, description, llvm}      what the artifact was compiled for
    frames       frames measured (fewer than frames_requested if the device failed)
    latency_ms   {mean, p50, p90, min, max, per_frame}   on the device's clock
    roundtrip_ms the same on the host's wall clock, transfers included
    fps          1000 / latency_ms.mean
    verify       {pha_max_abs, pha_mean_abs, mad_x1e3, fgr_*, tolerance, per_frame, passed}
    op_groups_ms ms per frame by operator group (local runs), completed, error, versions, created

latency.png: per-frame latency (device clock, and round trip) on the left, a histogram of the
device latency on the right. alpha_preview.png: input | device alpha | reference alpha |
|difference| (scaled so the max tolerance, 1e-2, is full scale) for the frame that differs most.
Every file is written atomically; the folder is created if needed and other files in it are kept.
"""

import contextlib
import json
from pathlib import Path

import numpy as np

from bimatting.atomic import atomic_path
from bimatting.errors import InputError, RuntimeFailure

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (170, 170, 170)
BLUE, ORANGE, RED = (200, 110, 30), (30, 140, 240), (40, 40, 220)  # BGR
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
FILES = ("bench.json", "latency.png", "alpha_preview.png")


def write(folder, result, clip, run):
    """Write the three files into `folder`; returns {name: path}."""
    import cv2

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--report '{folder}' is a file; give a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: str(folder / name) for name in FILES}
    plot = latency_plot(result["latency_ms"]["per_frame"], result["roundtrip_ms"]["per_frame"])
    contents = {
        "latency.png": _png_bytes(plot, cv2),
        "alpha_preview.png": _png_bytes(alpha_preview(clip, run), cv2),
        "bench.json": (json.dumps(result, indent=2, default=_plain) + "\n").encode(),
    }
    # all three written to temporary files first, renamed only once every write succeeded: a full
    # disk leaves the previous report whole
    with contextlib.ExitStack() as stack:
        for name in FILES:
            tmp = stack.enter_context(atomic_path(folder / name))
            Path(tmp).write_bytes(contents[name])
    return paths


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _png_bytes(image, cv2):
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeFailure("OpenCV could not encode a report image as PNG")
    return encoded.tobytes()


def _nice_max(value):
    """A round axis maximum >= value (1, 2, 5 x 10^k)."""
    if value <= 0:
        return 1.0
    power = 10 ** np.floor(np.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _text(canvas, text, origin, scale=0.45, color=BLACK, thickness=1):
    import cv2

    cv2.putText(canvas, text, (int(origin[0]), int(origin[1])), FONT, scale, color, thickness, cv2.LINE_AA)


def latency_plot(device_ms, roundtrip_ms, size=(960, 360)):
    """BGR uint8 image: latency per frame (left) and a histogram of the device latency (right)."""
    import cv2

    width, height = size
    canvas = np.full((height, width, 3), 255, np.uint8)
    split = int(width * 0.64)
    _frame_panel(canvas, (0, 0, split, height), device_ms, roundtrip_ms, cv2)
    _histogram_panel(canvas, (split, 0, width, height), device_ms, cv2)
    return canvas


def _axes(canvas, box, y_max, x_label, y_label, title, cv2):
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 58, x1 - 16, y0 + 34, y1 - 44
    cv2.rectangle(canvas, (left, top), (right, bottom), BLACK, 1)
    for k in range(5):
        value = y_max * k / 4
        y = bottom - (bottom - top) * k / 4
        cv2.line(canvas, (left, int(y)), (right, int(y)), (230, 230, 230), 1)
        _text(canvas, f"{value:.4g}", (x0 + 6, y + 4), 0.4)
    _text(canvas, title, (left, y0 + 22), 0.5, thickness=1)
    _text(canvas, x_label, ((left + right) / 2 - 20, y1 - 10), 0.45)
    _text(canvas, y_label, (x0 + 6, top - 8), 0.4)
    return left, right, top, bottom


def _frame_panel(canvas, box, device_ms, roundtrip_ms, cv2):
    series = [(device_ms, BLUE, "device"), (roundtrip_ms, ORANGE, "round trip")]
    series = [s for s in series if s[0]]
    peak = max((max(values) for values, _, _ in series), default=1.0)
    y_max = _nice_max(peak * 1.05)
    left, right, top, bottom = _axes(canvas, box, y_max, "frame", "ms", "latency per frame", cv2)
    count = max((len(values) for values, _, _ in series), default=1)

    def point(index, value):
        x = left + (right - left) * (index + 0.5) / count
        return int(round(x)), int(round(bottom - (bottom - top) * value / y_max))

    for values, color, _ in series:
        points = [point(i, v) for i, v in enumerate(values)]
        if len(points) > 1:
            cv2.polylines(canvas, [np.array(points, np.int32)], False, color, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(canvas, p, 3, color, -1, cv2.LINE_AA)
    if device_ms:
        mean = float(np.mean(device_ms))
        y = point(0, mean)[1]
        for x in range(left, right, 12):  # dashed mean line
            cv2.line(canvas, (x, y), (min(x + 6, right), y), BLUE, 1)
        _text(canvas, f"mean {mean:.3g} ms", (right - 130, y - 6), 0.4, BLUE)
    for k in range(min(count, 10) + 1):  # frame ticks
        index = round(k * (count - 1) / max(min(count, 10), 1)) if count > 1 else 0
        x = point(index, 0)[0]
        cv2.line(canvas, (x, bottom), (x, bottom + 4), BLACK, 1)
        _text(canvas, str(index + 1), (x - 4, bottom + 17), 0.38)
    for k, (_, color, name) in enumerate(series):  # legend
        y = top + 16 + 16 * k
        cv2.line(canvas, (left + 10, y - 4), (left + 30, y - 4), color, 2)
        _text(canvas, name, (left + 36, y), 0.4, color)


def _histogram_panel(canvas, box, device_ms, cv2):
    values = np.asarray(device_ms, np.float64)
    bins = max(1, min(10, len(values)))
    if len(values):
        low, high = float(values.min()), float(values.max())
        if high <= low:
            low, high = low * 0.95, high * 1.05 + 1e-9
        counts, edges = np.histogram(values, bins=bins, range=(low, high))
    else:
        counts, edges = np.zeros(1, int), np.array([0.0, 1.0])
    y_max = float(max(int(counts.max()), 1))
    left, right, top, bottom = _axes(canvas, box, y_max, "ms (device)", "frames", "histogram", cv2)
    width = (right - left) / len(counts)
    for k, count in enumerate(counts):
        x_a, x_b = int(left + k * width + 1), int(left + (k + 1) * width - 1)
        y = int(bottom - (bottom - top) * count / y_max)
        cv2.rectangle(canvas, (x_a, y), (x_b, bottom), BLUE, -1)
    _text(canvas, f"{edges[0]:.3g}", (left - 4, bottom + 17), 0.38)
    _text(canvas, f"{edges[-1]:.3g}", (right - 30, bottom + 17), 0.38)


def alpha_preview(clip, run, panel_height=240):
    """BGR uint8: input | device alpha | reference alpha | |difference| for the worst frame."""
    import cv2

    outputs = run["outputs"]
    if not outputs:
        blank = np.full((panel_height, panel_height * 2, 3), 255, np.uint8)
        _text(blank, "no frame was measured", (10, panel_height // 2), 0.6, RED)
        return blank
    reference = run.get("reference")
    if reference:
        diffs = [float(np.abs(o["pha"] - r["pha"]).max()) for o, r in zip(outputs, reference)]
        index = int(np.argmax(diffs))
    else:
        index = len(outputs) - 1
    frame = clip[index]
    panels = [(_to_bgr(frame, cv2), f"input (frame {index + 1})"), (_gray(outputs[index]["pha"]), "device alpha")]
    if reference:
        diff = np.abs(outputs[index]["pha"][0, 0].astype(np.float64) - reference[index]["pha"][0, 0])
        heat = cv2.applyColorMap(np.clip(diff / 1e-2 * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        panels += [
            (_gray(reference[index]["pha"]), "reference alpha (onnxruntime)"),
            (heat, f"|diff| (1e-2 = full), max {diff.max():.1e}"),
        ]
    scale = panel_height / frame.shape[0]
    size = (max(1, int(round(frame.shape[1] * scale))), panel_height)
    strip = 26
    tiles = []
    for image, label in panels:
        tile = np.full((panel_height + strip, size[0], 3), 255, np.uint8)
        tile[strip:] = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        _text(tile, label, (4, 18), 0.42)
        tiles.append(tile)
        tiles.append(np.full((panel_height + strip, 4, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def _to_bgr(frame, cv2):
    return cv2.cvtColor((np.clip(frame, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)


def _gray(pha):
    alpha = (np.clip(pha[0, 0], 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(alpha[:, :, None], 3, axis=2)
