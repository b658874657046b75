"""The one frame reader (bimatting.matting.frames): a clip folder that holds only its video reads
as that video, as the distillation's footage lists already treated it."""

import cv2
import numpy as np
import pytest

from bimatting.errors import InputError
from bimatting.matting.frames import iter_frames_uint8, resolve_clip


def _write_video(path, frames=5, size=(48, 32)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for t in range(frames):
        writer.write(np.full((size[1], size[0], 3), 40 * t, np.uint8))
    writer.release()
    return path


def test_a_folder_holding_one_video_reads_as_that_video(tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    video = _write_video(clip / "take.mp4")
    assert resolve_clip(clip) == video
    from_folder, from_file = list(iter_frames_uint8(clip)), list(iter_frames_uint8(video))
    assert len(from_folder) == 5 and all(np.array_equal(a, b) for a, b in zip(from_folder, from_file))


def test_a_folder_of_two_videos_is_still_refused(tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    _write_video(clip / "a.mp4")
    _write_video(clip / "b.mp4")
    assert resolve_clip(clip) == clip
    with pytest.raises(InputError, match="holds no images"):
        list(iter_frames_uint8(clip))
