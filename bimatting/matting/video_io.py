"""Input and output of `bimatting matte`: frame sources, backgrounds, video and PNG writers.

Sources: a video file (its frame rate kept), a folder of images (taken as FOLDER_FPS frames per
second) or a webcam index ("0"). Sinks: a video file, its codec chosen from the extension through
OpenCV, or a folder of PNGs (alpha: 8-bit grayscale; foreground and composite: RGB; foreground
RGBA on request). Every sink writes to a temporary name and is renamed only when the whole clip
is done (bimatting.atomic), so a failure leaves no partial output. Torch-free.
"""

import contextlib
import math
import os
import sys
from pathlib import Path

import numpy as np

from bimatting.atomic import atomic_dir, atomic_path, check_writable_parent
from bimatting.errors import InputError, RuntimeFailure
from bimatting.matting.frames import IMAGE_SUFFIXES, list_images, read_image

FOLDER_FPS = 30.0
# extension -> OpenCV fourcc (both are in every OpenCV-FFmpeg build, opencv-python-headless included)
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
# RVM's inference.py composites on this green: (120, 255, 155) / 255
NAMED_COLORS = {"green": (120, 255, 155), "white": (255, 255, 255), "black": (0, 0, 0)}


# -- sources -----------------------------------------------------------------------------------


class FrameSource:
    """Frames of a video, an image folder or a webcam; opened (and the first frame read) up front."""

    def __init__(self, spec, start=0.0, limit=None):
        self.spec, self.start, self.limit = str(spec), float(start), limit
        self.capture, self.files, self.first = None, None, None
        path = Path(self.spec)
        if path.is_dir():
            self.kind = "folder"
            self.files = list_images(path)
            self.fps = FOLDER_FPS
            self.files = self.files[round(self.start * self.fps) :]
            if not self.files:
                raise InputError(
                    f"--start {self.start:g}s is past the end of '{path}' "
                    f"({len(list_images(path))} images at {FOLDER_FPS:g} frames/s)"
                )
            self.first = read_image(self.files[0])
            available = len(self.files)
        elif self.spec.isdigit() and not path.exists():
            self.kind = "webcam"
            available = self._open_capture(int(self.spec), f"webcam {self.spec}")
        else:
            if not path.exists():
                raise InputError(
                    f"input '{path}' does not exist; give a video file, a folder of images or a webcam index"
                )
            if path.suffix.lower() in IMAGE_SUFFIXES:
                raise InputError(f"input '{path}' is a single image; give a video file or a folder of images")
            self.kind = "video"
            available = self._open_capture(str(path), f"video '{path}'")
        self.size = (self.first.shape[1], self.first.shape[0])  # (width, height)
        self.total = None if available is None else (available if limit is None else min(limit, available))

    def _open_capture(self, target, what):
        import cv2

        if isinstance(target, str) and os.path.getsize(target) == 0:
            raise InputError(f"{what} is an empty file (0 bytes); expected a video file")
        with _quiet_stderr():  # FFmpeg/V4L2 print their own diagnoses; ours is the one line below
            capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            hint = (
                "check the camera index"
                if self.kind == "webcam"
                else "expected a video file OpenCV can decode (mp4, avi, mkv, mov)"
            )
            raise InputError(f"cannot open {what}; {hint}")
        self.capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and math.isfinite(fps) and 0 < fps <= 1000 else FOLDER_FPS
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if self.kind == "video" else 0
        skip = round(self.start * self.fps)
        if skip and self.kind == "video":
            capture.set(cv2.CAP_PROP_POS_FRAMES, skip)
        with _quiet_stderr():
            ok, frame = capture.read()
        if not ok:
            self.close()
            where = f" at {self.start:g}s" if skip else ""
            raise InputError(
                f"{what} has no readable frames{where}; the file may be empty, corrupt or shorter than --start"
            )
        self.first = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        return max(count - skip, 1) if count > 0 else None

    def __iter__(self):
        yielded = 0
        for frame in self._frames():
            if self.limit is not None and yielded >= self.limit:
                return
            yield frame
            yielded += 1

    def _frames(self):
        if self.first is not None:
            first, self.first = self.first, None
            yield first
        if self.kind == "folder":
            for path in self.files[1:]:
                yield self._same_size(read_image(path), path)
            return
        import cv2

        while True:
            with _quiet_stderr():  # FFmpeg reports damaged packets itself; matte's summary warns once
                ok, frame = self.capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0

    def _same_size(self, frame, path):
        import cv2

        if (frame.shape[1], frame.shape[0]) == self.size:
            return frame
        return cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)  # a folder of mixed sizes

    def close(self):
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C libraries write there directly) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# -- backgrounds -------------------------------------------------------------------------------


def parse_background(text, size):
    """'green' | 'white' | '#RRGGBB' | 'R,G,B' (0-255) | an image file -> float32 [H, W, 3] or [3]."""
    text = str(text).strip()
    if text.lower() in NAMED_COLORS:
        return np.asarray(NAMED_COLORS[text.lower()], np.float32) / 255.0
    hex_digits = text[1:] if text.startswith("#") else text
    if len(hex_digits) == 6 and all(c in "0123456789abcdefABCDEF" for c in hex_digits) and not Path(text).exists():
        return np.asarray([int(hex_digits[i : i + 2], 16) for i in (0, 2, 4)], np.float32) / 255.0
    parts = text.split(",")
    if len(parts) == 3 and not Path(text).exists():
        try:
            rgb = [int(p) for p in parts]
        except ValueError:
            rgb = None
        if rgb is not None and all(0 <= v <= 255 for v in rgb):
            return np.asarray(rgb, np.float32) / 255.0
    path = Path(text)
    if path.is_file():
        import cv2

        image = read_image(path)
        return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
    raise InputError(
        f"background '{text}' is neither a colour (green, white, #RRGGBB, R,G,B) nor an existing image file"
    )


def composite(fgr, pha, background):
    """fgr [H,W,3], pha [H,W], background [3] or [H,W,3] -> fgr * pha + background * (1 - pha)."""
    alpha = pha[..., None]
    return fgr * alpha + background * (1.0 - alpha)


# -- sinks -------------------------------------------------------------------------------------


def _to_uint8(image):
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _render(kind, frame, fgr, pha, background, rgba):
    """The RGB(A) or gray uint8 image of one output kind."""
    if kind == "alpha":
        return _to_uint8(pha)  # [H, W]
    if kind == "foreground":
        return _to_uint8(np.concatenate([fgr, pha[..., None]], axis=2) if rgba else fgr)
    return _to_uint8(composite(fgr, pha, background))  # [H, W, 3]


class VideoSink:
    def __init__(self, path, tmp, kind, fps, size):
        import cv2

        self.path, self.kind, self.tmp, self.size, self.count = path, kind, tmp, tuple(size), 0
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[path.suffix.lower()])
        self.writer = cv2.VideoWriter(str(tmp), fourcc, float(fps), tuple(size))
        if not self.writer.isOpened():
            raise InputError(
                f"OpenCV cannot write '{path}' with codec {VIDEO_CODECS[path.suffix.lower()]}; "
                f"use one of: {', '.join(VIDEO_CODECS)}"
            )

    def write(self, frame, fgr, pha, background):
        import cv2

        image = _render(self.kind, frame, fgr, pha, background, rgba=False)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)  # gray video as RGB
        self.writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self):
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def finish(self):
        """Close the file and read it back: OpenCV's writer reports no failed write (a full disk, a
        file size limit), so a short or unreadable file is caught here, before it is renamed."""
        import cv2

        self.close()
        if not self.count:
            return
        with _quiet_stderr():  # a damaged file makes the demuxers talk; the error below is the message
            capture = cv2.VideoCapture(str(self.tmp))
            try:
                frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
                ok, first = capture.read() if capture.isOpened() else (False, None)
            finally:
                capture.release()
        if not ok or frames != self.count or (first.shape[1], first.shape[0]) != self.size:
            raise RuntimeFailure(
                f"could not write '{self.path}' completely ({frames} of {self.count} frames "
                "readable back; disk full or file size limit?); the previous file, if any, is kept"
            )


class PngSink:
    def __init__(self, path, folder, kind, rgba):
        self.path, self.folder, self.kind, self.rgba = path, Path(folder), kind, rgba
        self.index = 0

    def write(self, frame, fgr, pha, background):
        import cv2

        image = _render(self.kind, frame, fgr, pha, background, self.rgba)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        target = self.folder / f"{self.index:05d}.png"
        ok, encoded = cv2.imencode(".png", image)  # encoded in memory: a failed write is an OSError
        if not ok:  # (atomic_dir: one line), not libpng noise on stderr
            raise RuntimeFailure(f"OpenCV could not encode '{target}' as PNG")
        target.write_bytes(encoded.tobytes())
        self.index += 1

    def close(self):
        pass

    def finish(self):
        pass


def output_kind(output):
    """'video' when OUTPUT names a video file, 'folder' for a PNG folder (no suffix or an existing folder)."""
    path = Path(output)
    if path.is_dir() or not path.suffix:
        return "folder"
    if path.suffix.lower() in VIDEO_CODECS:
        return "video"
    raise InputError(
        f"output '{path}' has the unknown extension '{path.suffix}'; expected a video "
        f"({', '.join(VIDEO_CODECS)}) or a folder name for PNGs"
    )


def _usual_mode(path, mode):
    """Temporary files are private (0600); the finished output gets the permissions of a new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def open_sinks(output, kinds, fps, size, rgba=False):
    """Yield one sink per output kind; all outputs appear together when the block succeeds.

    Video: OUTPUT holds the first kind, the others go beside it as <stem>_<kind><ext>.
    Folder: one kind -> PNGs in OUTPUT; several -> OUTPUT/<kind>/ subfolders.
    """
    path = Path(output)
    kind = output_kind(path)
    check_writable_parent(path)
    if kind == "video" and rgba:
        raise InputError("--rgba needs a PNG folder output; videos hold no alpha channel")
    if kind == "video" and (size[0] % 2 or size[1] % 2):  # the codecs store 4:2:0 colour: they would crop
        raise InputError(
            f"frames of {size[0]}x{size[1]} cannot be stored in a video (its codecs need an even "
            f"width and height); write a PNG folder instead (-o {path.stem}/)"
        )
    if rgba and "foreground" not in kinds:
        raise InputError("--rgba applies to the foreground; use --output-type foreground or all")
    sinks = []
    with contextlib.ExitStack() as stack:
        if kind == "video":
            for index, item in enumerate(kinds):
                target = path if index == 0 else path.with_name(f"{path.stem}_{item}{path.suffix}")
                tmp = stack.enter_context(atomic_path(target))
                _usual_mode(tmp, 0o666)
                sinks.append(VideoSink(target, tmp, item, fps, size))
                stack.callback(sinks[-1].close)
        else:
            folder = stack.enter_context(atomic_dir(path))
            _usual_mode(folder, 0o777)
            for item in kinds:
                sub = folder if len(kinds) == 1 else folder / item
                sub.mkdir(exist_ok=True)
                sinks.append(PngSink(path if len(kinds) == 1 else path / item, sub, item, rgba))
        yield sinks
        for sink in sinks:  # before the renames: a sink that cannot be read back is not swapped in
            sink.finish()
