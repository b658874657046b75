"""A composited evaluation set with known alpha, in RVM's evaluation layout.

    <out>/videomatte_motion/<clip>/{com,fgr,pha,bgr}/NNNN.png   background drifts over time
    <out>/videomatte_static/<clip>/{com,fgr,pha,bgr}/NNNN.png   background still

as RVM's sets: motion clips are composited over background *videos*, static clips over still
images. Foregrounds alternate between the RVM teacher's fgr/pha on real footage (when footage is
given) and procedural soft-edged figures (bimatting.data.procedural). Backgrounds are the given
images or frames, else procedural textures; motion backgrounds are simulated by an eased affine
drift (pan, zoom, slight roll) of a larger still. `bgr/` is an extra the official sets lack: it
makes com = fgr*pha + bgr*(1-pha) checkable. All layers are quantised to uint8 first and the
composite is made from the quantised values, so the written files agree within uint8 rounding.
"""

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bimatting.atomic import atomic_dir
from bimatting.data.easing import EASINGS, lerp
from bimatting.data.procedural import soft_shapes_clip, texture
from bimatting.data.teacher_labels import Teacher, cover_resize, read_footage
from bimatting.errors import InputError
from bimatting.eval.tree import check_output_folder
from bimatting.matting.frames import IMAGE_SUFFIXES, iter_frames, list_images, read_image

SUBSETS = ("videomatte_motion", "videomatte_static")
MARGIN = 1.25  # backgrounds are made this much larger so a drifting view never leaves them


def background_stills(paths):
    """Background images from files, image folders or videos (up to 8 frames each). [[H,W,3]]"""
    stills = []
    for path in map(Path, paths):
        if not path.exists():
            raise InputError(f"background '{path}' does not exist; give images, folders of images or videos")
        if path.is_dir():
            stills += list_images(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            stills.append(path)
        else:
            frames = list(iter_frames(path, limit=200))
            stills += frames[:: max(1, len(frames) // 8)][:8]
    return stills


def _load_still(item):
    return read_image(item) if isinstance(item, Path) else item


def drifting_background(rng, still, frames, width, height, *, moving):
    """[T,H,W,3] view of `still` (>= MARGIN x the output): fixed, or drifting along an easing curve."""
    import cv2

    big = cover_resize(still, math.ceil(width * MARGIN), math.ceil(height * MARGIN))
    centre = np.array([big.shape[1], big.shape[0]]) / 2
    start, end = (
        [rng.uniform(-0.08, 0.08) * width, rng.uniform(-0.08, 0.08) * height, rng.uniform(1.0, 1.1), rng.uniform(-3, 3)]
        for _ in range(2)
    )
    if not moving:
        end = start
    easing = list(EASINGS.values())[rng.integers(len(EASINGS))]
    out = np.empty((frames, height, width, 3), np.float32)
    for t in range(frames):
        dx, dy, zoom, degrees = lerp(np.array(start), np.array(end), easing(t / max(frames - 1, 1)))
        # Output pixel p -> background pixel centre + shift + R(degrees) (p - out_centre) / zoom.
        angle = math.radians(degrees)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / zoom
        offset = centre + (dx, dy) - rotation @ np.array([width / 2, height / 2])
        matrix = np.hstack([rotation, offset[:, None]]).astype(np.float64)
        out[t] = cv2.warpAffine(
            big, matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
    return out


def composite(fgr, pha, bgr):
    """uint8 layers -> uint8 composite, computed from the quantised values."""
    f, a, b = fgr / 255.0, pha[..., None] / 255.0, bgr / 255.0
    return np.round((f * a + b * (1 - a)) * 255).astype(np.uint8)


def _quantise(x):
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _write_clip(folder, fgr, pha, bgr, on_frame):
    import cv2

    layers = {"fgr": _quantise(fgr), "pha": _quantise(pha), "bgr": _quantise(bgr)}
    layers["com"] = composite(layers["fgr"], layers["pha"], layers["bgr"])
    for kind in ("com", "fgr", "pha", "bgr"):
        (folder / kind).mkdir(parents=True)
    for t in range(len(fgr)):
        for kind, frames in layers.items():
            image = frames[t] if kind == "pha" else cv2.cvtColor(frames[t], cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(folder / kind / f"{t:04d}.png"), image):
                raise OSError(f"could not write '{folder / kind}'")
        on_frame()


def plan(clips, footage):
    """Foreground source per clip index: footage path (even clips, when given) or None (procedural)."""
    return [footage[(c // 2) % len(footage)] if footage and c % 2 == 0 else None for c in range(clips)]


def synthesize(
    out,
    *,
    clips=5,
    frames=100,
    size=(512, 288),
    footage=(),
    backgrounds=(),
    seed=0,
    teacher="rvm",
    device="cpu",
    progress=True,
):
    """Write the set to `out` atomically; returns {subset: [clip names]}. See the module docstring."""
    width, height = size
    if clips < 1 or frames < 1 or width < 16 or height < 16:
        raise InputError(
            f"need clips >= 1, frames >= 1 and a size of at least 16x16, got "
            f"{clips} clips, {frames} frames, {width}x{height}"
        )
    for path in footage:
        if not Path(path).exists():
            raise InputError(f"footage '{path}' does not exist; give a video file or a folder of frames")
    check_output_folder(out, *footage, *backgrounds)  # it is replaced as a whole
    stills = background_stills(backgrounds)
    sources = plan(clips, list(footage))
    matter = Teacher(teacher, device)
    mattes = {}
    written = {}
    with (
        atomic_dir(out) as tmp,
        tqdm(total=2 * clips * frames, desc="synth", unit="frame", disable=not progress) as bar,
    ):
        for subset_index, subset in enumerate(SUBSETS):
            for c, source in enumerate(sources):
                rng = np.random.default_rng([seed, subset_index, c])
                if source is None:
                    fgr, pha = soft_shapes_clip(rng, frames, height, width)
                else:
                    if source not in mattes:
                        bar.set_postfix_str(f"teacher on {Path(source).name}")
                        mattes[source] = matter.matte(read_footage(source, frames, width, height))
                    fgr, pha = mattes[source]
                    if rng.random() < 0.5:  # mirrored variant
                        fgr, pha = fgr[:, :, ::-1], pha[:, :, ::-1]
                still = (
                    _load_still(stills[rng.integers(len(stills))])
                    if stills
                    else texture(rng, math.ceil(height * MARGIN), math.ceil(width * MARGIN))
                )
                bgr = drifting_background(rng, still, frames, width, height, moving=subset == SUBSETS[0])
                _write_clip(Path(tmp) / subset / f"{c:04d}", fgr, pha, bgr, lambda: bar.update(1))
                written.setdefault(subset, []).append(f"{c:04d}")
    return written
