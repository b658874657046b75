"""`bimatting evaluate --against rvm FOOTAGE`: a model's agreement with a teacher on the user's own
unlabelled footage, and a preview picture (frame | teacher alpha | model alpha | difference).

Each footage item (a video, a frame folder, or CLIP@START:STOP for a frame range) is read at the
evaluation size (long side `long_side`), both networks run over it with their recurrent states
carried (bimatting.eval.agreement), and the figures are reported per clip and overall.
"""

import numpy as np
import torch
from tqdm import tqdm

from bimatting.atomic import write_bytes
from bimatting.eval.agreement import compare, run_recurrent, totals
from bimatting.matting.frames import iter_frames_uint8
from bimatting.train.clips import frames_to_uint8_tensor
from bimatting.train.footage import parse_heldout
from bimatting.weights.checkpoints import load_model


def evaluate_against(
    model_source, teacher_source, footage, *, long_side=512, frames=None, downsample_ratio=1.0, progress=True
):
    """{'clips': [...], 'pha_mad_mean', 'pha_mad_worst', 'iou_mean', 'iou_worst', 'fgr_mad_mean'} and
    previews [(name, uint8 image)]."""
    model, teacher = load_model(model_source).eval(), load_model(teacher_source).eval()
    results, previews = [], []
    for spec in tqdm(footage, desc="clips", unit="clip", disable=not progress):
        path, start, stop = parse_heldout(spec)
        limit = stop if stop is not None else (start + frames if frames else 100000)
        clip = list(iter_frames_uint8(path, limit=limit, long_side=long_side))[start:stop]
        clip = frames_to_uint8_tensor(clip[:frames] if frames else clip)
        name = path.parent.name if path.is_file() or path.name == "frames" else path.name
        with torch.no_grad():
            mine = run_recurrent(model, clip, downsample_ratio)
            theirs = run_recurrent(teacher, clip, downsample_ratio)
        results.append(compare(name + (f"@{start}:{stop or ''}" if start or stop else ""), mine, theirs))
        middle = clip.shape[0] // 2
        previews.append((name, preview(clip[middle], theirs[1][middle], mine[1][middle])))
    return totals(results), previews


def preview(frame, teacher_pha, model_pha):
    """uint8 RGB [h, 4w, 3]: the frame, the teacher's alpha, the model's alpha, |difference|."""
    rgb = frame.permute(1, 2, 0).numpy()
    grey = [
        np.repeat((p[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
        for p in (teacher_pha, model_pha, (teacher_pha - model_pha).abs())
    ]
    return np.concatenate([rgb, *grey], axis=1)


def write_previews(path, previews):
    """Stack the previews (resized to one width) into one PNG, written atomically."""
    import cv2  # noqa: PLC0415 - OpenCV loads on first use

    width = max(image.shape[1] for _, image in previews)
    rows = []
    for name, image in previews:
        scale = width / image.shape[1]
        image = cv2.resize(image, (width, round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        cv2.putText(image, name, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2, cv2.LINE_AA)
        rows.append(image)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    write_bytes(path, encoded.tobytes())
