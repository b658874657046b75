"""Data: `bimatting data synth` output, the dataset readers on tiny trees written here, layout
errors, the frame sampler's rules and the torch-only augmentation primitives."""

import colorsys
import json
import math
import random
import shutil

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bimatting.cli import cli
from bimatting.data import (
    Backgrounds,
    ImageMatteDataset,
    MotionAugmentation,
    SegmentationAugmentation,
    SuperviselyPersonDataset,
    TrainFrameSampler,
    ValidFrameSampler,
    VideoMatteDataset,
    coco_from_root,
    colour,
    easing,
    geometric_transforms,
    rle,
    youtubevis_from_root,
)
from bimatting.data.motion import Probabilities
from bimatting.data.sampler import SPEEDS, frame_indices
from bimatting.errors import InputError
from bimatting.train.sources import real_sources
from bimatting.train.stages import stage_config

KINDS = ("com", "fgr", "pha", "bgr")


# ---------------------------------------------------------------- data synth
def _read_clip(folder, frames):
    out = {}
    for kind in KINDS:
        flag = cv2.IMREAD_GRAYSCALE if kind == "pha" else cv2.IMREAD_COLOR
        out[kind] = np.stack([cv2.imread(str(folder / kind / f"{t:04d}.png"), flag) for t in range(frames)])
    return out


def _check_composite(layers):
    """com == fgr*pha + bgr*(1-pha) from the written uint8 values, within rounding (0.5 level)."""
    a = layers["pha"][..., None].astype(np.float64) / 255
    expected = layers["fgr"] * a + layers["bgr"] * (1 - a)
    assert np.abs(layers["com"] - expected).max() <= 0.5 + 1e-6


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "set"
    args = ["data", "synth", "--out", str(out), "--clips", "2", "--frames", "4", "--size", "64x48", "--seed", "3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out, args


def test_synth_layout_and_composite(synth_set):
    out, _ = synth_set
    assert sorted(p.name for p in out.iterdir()) == ["videomatte_motion", "videomatte_static"]
    for subset in ("videomatte_motion", "videomatte_static"):
        assert sorted(p.name for p in (out / subset).iterdir()) == ["0000", "0001"]
        for clip in ("0000", "0001"):
            folder = out / subset / clip
            for kind in KINDS:
                assert sorted(p.name for p in (folder / kind).iterdir()) == [f"{t:04d}.png" for t in range(4)]
            layers = _read_clip(folder, 4)
            assert layers["com"].shape == (4, 48, 64, 3) and layers["pha"].shape == (4, 48, 64)
            _check_composite(layers)
            pha = layers["pha"]
            # A figure with a solid core, a soft border and background around it.
            assert (pha == 255).any() and (pha == 0).any() and ((pha > 0) & (pha < 255)).sum() > 20
            assert not np.array_equal(pha[0], pha[-1])  # the figure moves


def test_synth_motion_versus_static_background(synth_set):
    out, _ = synth_set
    for clip in ("0000", "0001"):
        static = _read_clip(out / "videomatte_static" / clip, 4)["bgr"]
        motion = _read_clip(out / "videomatte_motion" / clip, 4)["bgr"]
        assert all(np.array_equal(static[0], frame) for frame in static[1:])
        assert np.abs(motion[0].astype(int) - motion[-1].astype(int)).mean() > 1.0


def test_synth_is_deterministic_and_atomic(synth_set, tmp_path):
    out, args = synth_set
    again = tmp_path / "again"
    result = CliRunner().invoke(cli, [*args[:3], str(again), *args[4:]])
    assert result.exit_code == 0, result.output
    for path in out.rglob("*.png"):
        assert path.read_bytes() == (again / path.relative_to(out)).read_bytes()
    bad = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "bad"), "--size", "64by48"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary leftovers
    # --out is replaced as a whole: a folder holding anything else is refused and left intact.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "mine"), "--frames", "1"])
    assert refused.exit_code == 2 and "notes.txt" in refused.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_synth_with_teacher_footage(bedroom_frames_dir, tmp_path):
    out = tmp_path / "footage"
    result = CliRunner().invoke(
        cli,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--clips",
            "1",
            "--frames",
            "2",
            "--size",
            "128x72",
            "--footage",
            str(bedroom_frames_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    layers = _read_clip(out / "videomatte_motion" / "0000", 2)
    _check_composite(layers)
    # The teacher finds the two children: a sizeable, not total, foreground.
    assert 0.03 < (layers["pha"] > 128).mean() < 0.6


# ---------------------------------------------------------------- readers on tiny trees
def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _flat(value, shape):
    return np.full(shape, value, np.uint8)


@pytest.fixture
def matting_tree(tmp_path):
    """VideoMatte (clips of 5 and 3 frames, frame k filled with 40k+10), ImageMatte (2 images),
    background images and videos. PNG keeps the values exact."""
    for clip, count in (("0000", 5), ("0001", 3)):
        for k in range(count):
            _write(tmp_path / "vm/train/fgr" / clip / f"{k:05d}.png", _flat(40 * k + 10, (24, 32, 3)))
            _write(tmp_path / "vm/train/pha" / clip / f"{k:05d}.png", _flat(40 * k + 10, (24, 32)))
    for name, value in (("a", 50), ("b", 200)):
        _write(tmp_path / "im/train/fgr" / f"{name}.png", _flat(value, (30, 30, 3)))
        _write(tmp_path / "im/train/pha" / f"{name}.png", _flat(255 - value, (30, 30)))
    for i in range(2):
        _write(tmp_path / "bgi" / f"{i}.png", _flat(100 + i, (40, 50, 3)))
        for k in range(4):
            _write(tmp_path / "bgv" / f"c{i}" / f"{k:04d}.png", _flat(10 * k + i, (40, 50, 3)))
    return tmp_path


def test_videomatte_reader_indexing_and_modulo(matting_tree):
    backgrounds = Backgrounds(video_dir=matting_tree / "bgv", size=24, rng=random.Random(0))
    dataset = VideoMatteDataset(
        matting_tree / "vm",
        backgrounds,
        size=24,
        seq_length=3,
        sampler=ValidFrameSampler(),
        transform=MotionAugmentation.valid(24),
    )
    assert len(dataset) == math.ceil(5 / 3) + math.ceil(3 / 3)  # sum ceil(frames / T)
    fgrs, phas, bgrs = dataset[1]  # clip 0000 from frame 3
    assert fgrs.shape == (3, 3, 24, 24) and phas.shape == (3, 1, 24, 24) and bgrs.shape == (3, 3, 24, 24)
    assert fgrs.dtype == torch.float32 and 0 <= float(fgrs.min()) and float(fgrs.max()) <= 1
    # Frames 3, 4, then 0 (start + offset modulo the clip length).
    levels = [round(float(f.mean()) * 255) for f in fgrs]
    assert levels == [130, 170, 10]
    assert [round(float(p.mean()) * 255) for p in phas] == levels
    # Video background: consecutive frames of one clip (values 10k + clip).
    values = [round(float(b.mean()) * 255) for b in bgrs]
    assert values[1] - values[0] == 10 and values[2] - values[1] == 10


def test_imagematte_reader_repeats_image(matting_tree):
    backgrounds = Backgrounds(image_dir=matting_tree / "bgi", size=24, rng=random.Random(1))
    dataset = ImageMatteDataset(
        matting_tree / "im", backgrounds, size=24, seq_length=4, transform=MotionAugmentation.valid(24)
    )
    assert len(dataset) == 2
    fgrs, phas, bgrs = dataset[1]
    assert fgrs.shape == (4, 3, 24, 24) and phas.shape == (4, 1, 24, 24)
    assert torch.allclose(fgrs, torch.full_like(fgrs, 200 / 255)) and torch.allclose(
        phas, torch.full_like(phas, 55 / 255)
    )
    assert all(torch.equal(bgrs[0], b) for b in bgrs)  # still image, repeated


def test_background_images_versus_videos(matting_tree):
    images = Backgrounds(image_dir=matting_tree / "bgi", rng=random.Random(2)).sample(3)
    assert images.shape == (3, 3, 40, 50) and torch.equal(images[0], images[2])
    mixed = Backgrounds(matting_tree / "bgi", matting_tree / "bgv", image_probability=0.5, rng=random.Random(3))
    kinds = {bool(torch.equal(s[0], s[-1])) for s in (mixed.sample(3) for _ in range(30))}
    assert kinds == {True, False}  # both sources are drawn


def test_large_frames_shrink_to_short_side(tmp_path):
    _write(tmp_path / "bgi" / "big.png", _flat(7, (120, 300, 3)))
    frames = Backgrounds(image_dir=tmp_path / "bgi", size=60).sample(1)
    assert frames.shape == (1, 3, 60, 150)


@pytest.mark.parametrize(
    "remove, named",
    [("vm/train/pha", "vm/train/pha"), ("vm/train", "vm/train"), ("vm/train/pha/0001", "vm/train/pha/0001")],
)
def test_wrong_layout_names_first_missing_folder(matting_tree, remove, named):
    shutil.rmtree(matting_tree / remove)
    with pytest.raises(InputError, match=named):
        VideoMatteDataset(matting_tree / "vm", backgrounds=None)
    result = CliRunner().invoke(cli, ["data", "check", "videomatte", str(matting_tree / "vm")])
    assert result.exit_code == 2
    assert f"missing folder '{matting_tree / named}'" in result.output and "Traceback" not in result.output


def test_data_check_counts(matting_tree):
    result = CliRunner().invoke(cli, ["data", "check", "background-videos", str(matting_tree / "bgv"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["items"] == 2


def test_segmentation_readers(tmp_path):
    # COCO panoptic: ids 5 (person), 300 = R 44 + 256 G 1 (backpack), 7 (car, not foreground).
    ids = np.zeros((16, 16), np.int64)
    ids[2:6, 2:6], ids[8:12, 8:12], ids[0:2, 10:16] = 5, 300, 7
    png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    _write(tmp_path / "coco/panoptic_train2017/1.png", cv2.cvtColor(png, cv2.COLOR_RGB2BGR))
    _write(tmp_path / "coco/train2017/1.jpg", _flat(90, (16, 16, 3)))
    segments = [{"id": 5, "category_id": 1}, {"id": 300, "category_id": 27}, {"id": 7, "category_id": 3}]
    annotations = {
        "annotations": [
            {"file_name": "1.png", "segments_info": segments},
            {"file_name": "2.png", "segments_info": [{"id": 1, "category_id": 3}]},
        ]
    }
    (tmp_path / "coco/annotations").mkdir()
    (tmp_path / "coco/annotations/panoptic_train2017.json").write_text(json.dumps(annotations))
    keep = SegmentationAugmentation(16, segs_mode="nearest")
    coco = coco_from_root(tmp_path / "coco", size=16, transform=keep)
    assert len(coco) == 1  # only images with a person
    img, seg = coco[0]
    assert img.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(seg[0, 0].numpy(), ((ids == 5) | (ids == 300)).astype(np.float32))

    mask = np.zeros((16, 16), np.uint8)
    mask[3:9, 4:7] = 255
    _write(tmp_path / "spd/img/a.png", _flat(30, (16, 16, 3)))
    _write(tmp_path / "spd/seg/a.png", mask)
    img, seg = SuperviselyPersonDataset(tmp_path / "spd", size=16, transform=keep)[0]
    np.testing.assert_array_equal(seg[0, 0].numpy(), mask / 255)

    # YouTubeVIS: 3 frames, a person instance (uncompressed RLE) on frames 0 and 2, a cat on frame 1.
    masks = [np.zeros((8, 10), np.uint8) for _ in range(3)]
    masks[0][1:4, 2:5] = 1
    masks[2][5:8, 0:3] = 1
    rles = [{"size": [8, 10], "counts": rle.encode_counts(m)} if m.any() else None for m in masks]
    names = [f"v1/{k:05d}.jpg" for k in range(3)]
    for name in names:
        _write(tmp_path / "yt/JPEGImages" / name, _flat(60, (8, 10, 3)))
    vis = {
        "videos": [{"id": 1, "height": 8, "width": 10, "file_names": names}],
        "annotations": [
            {"video_id": 1, "category_id": 26, "segmentations": rles},
            {"video_id": 1, "category_id": 4, "segmentations": [None, rles[0], None]},
        ],
    }
    (tmp_path / "yt/instances.json").write_text(json.dumps(vis))
    dataset = youtubevis_from_root(
        tmp_path / "yt",
        size=16,
        seq_length=3,
        sampler=ValidFrameSampler(),
        transform=SegmentationAugmentation((8, 10), segs_mode="nearest"),
    )
    assert len(dataset) == 3
    imgs, segs = dataset[0]
    assert imgs.shape == (3, 3, 8, 10) and segs.shape == (3, 1, 8, 10)
    for k in range(3):
        np.testing.assert_array_equal(segs[k, 0].numpy(), masks[k].astype(np.float32))


def test_rle_decoding():
    # Column-major runs: 2 zeros, 3 ones, 1 zero on a 2x3 mask -> column 0 = [0 0], 1 = [1 1], 2 = [1 0].
    np.testing.assert_array_equal(
        rle.decode({"size": [2, 3], "counts": [2, 3, 1]}) > 0, [[False, True, True], [False, True, False]]
    )
    # Compressed strings, worked by hand from the format: '3','2','1' are single 5-bit groups;
    # 'M' = 29 = -3 (sign bit 0x10); counts from the 4th on add the count two places earlier
    # ('1' after [3, 2, 1] -> 1 + 2 = 3); 'X1' = 8 | 0x20 (more), then 1 << 5 -> 40.
    assert rle.decode_counts_string("321") == [3, 2, 1]
    assert rle.decode_counts_string("51M") == [5, 1, -3]
    assert rle.decode_counts_string("3211") == [3, 2, 1, 3]
    assert rle.decode_counts_string("X1") == [40]
    assert (rle.decode({"size": [3, 3], "counts": "3211"}) > 0).sum() == 2 + 3


# ---------------------------------------------------------------- sampler
def test_train_sampler_rules():
    sampler = TrainFrameSampler(rng=random.Random(5))
    length = 6
    reversed_count, speeds, shifts = 0, set(), set()
    for _ in range(400):
        offsets = sampler(length)
        assert len(offsets) == length
        is_reversed = offsets[0] > offsets[-1]  # every speed advances over 6 frames
        ordered = offsets[::-1] if is_reversed else offsets
        shift = ordered[0]
        assert 0 <= shift < length
        speed = [s for s in SPEEDS if [int(i * s) + shift for i in range(length)] == ordered]
        assert speed, offsets
        reversed_count += is_reversed
        speeds.update(speed)
        shifts.add(shift)
    assert speeds == set(SPEEDS) and shifts == set(range(length))
    assert 150 < reversed_count < 250  # ~50%
    assert ValidFrameSampler()(4) == [0, 1, 2, 3]
    assert frame_indices(3, [0, 1, 2, 5], 4) == [3, 0, 1, 0]  # modulo the frame count


# ---------------------------------------------------------------- augmentation primitives
def test_easing_curves():
    assert len(easing.EASINGS) == 30
    for name, curve in easing.EASINGS.items():
        assert curve(0) == pytest.approx(0, abs=1e-3) and curve(1) == pytest.approx(1, abs=1e-3), name
    assert easing.EASINGS["quad_in"](0.5) == pytest.approx(0.25)
    assert easing.EASINGS["quad_out"](0.5) == pytest.approx(0.75)
    assert easing.EASINGS["cubic_in_out"](0.25) == pytest.approx(4 * 0.25**3)
    assert easing.step(0.49) == 0 and easing.step(0.5) == 1
    assert easing.EASINGS["back_in"](0.3) < 0  # overshoot is intended
    picks = {easing.random_easing(random.Random(s)) for s in range(300)}
    assert easing.linear in picks and easing.step in picks and len(picks) > 25


def test_affine_matches_exact_moves():
    x = torch.arange(2 * 36, dtype=torch.float32).reshape(2, 1, 6, 6)
    # +90 degrees is a quarter turn counter-clockwise (pixel centres map onto pixel centres).
    turned = geometric_transforms.affine(x, geometric_transforms.AffineParams(angle=90.0))
    assert torch.allclose(turned, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4)
    shifted = geometric_transforms.affine(x, geometric_transforms.AffineParams(translate=(2, 1)))
    assert torch.allclose(shifted[..., 1:, 2:], x[..., :-1, :-2], atol=1e-4)
    # Zero fill where the source is outside (up to float32 rounding of the sampling grid).
    assert shifted[..., 0, :].abs().max() < 1e-3 and shifted[..., :, :2].abs().max() < 1e-3
    half = geometric_transforms.affine(torch.ones(1, 1, 8, 8), geometric_transforms.AffineParams(scale=0.5))
    assert float(half.sum()) == pytest.approx(16, abs=1e-3)  # a 4x4 square remains


def test_resized_crop_fallback_is_centre_crop():
    # scale 1 never fits a non-square draw, so RRC falls back to the centre crop, ratio clamped.
    crop_params = geometric_transforms.resized_crop_params
    assert crop_params(100, 200, ratio=(0.9, 1.1), rng=random.Random(0)) == (0, 45, 100, 110)
    assert crop_params(100, 100, ratio=(1.0, 1.0), rng=random.Random(0)) == (0, 0, 100, 100)


def test_colour_ops_match_definitions():
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    hsv = colour.rgb_to_hsv(x)
    for pixel, expected in ((x[0, :, 1, 2], hsv[0, :, 1, 2]), (x[1, :, 4, 5], hsv[1, :, 4, 5])):
        assert np.allclose(colorsys.rgb_to_hsv(*pixel.tolist()), expected.tolist(), atol=1e-5)
    shifted = colour.adjust_hue(x, 0.25)[0, :, 0, 0].tolist()
    h, s, v = colorsys.rgb_to_hsv(*x[0, :, 0, 0].tolist())
    assert np.allclose(colorsys.hsv_to_rgb((h + 0.25) % 1, s, v), shifted, atol=1e-5)
    grey = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(colour.adjust_saturation(x, 0.0), grey[:, None].expand_as(x), atol=1e-6)
    assert torch.allclose(colour.adjust_contrast(x, 0.0)[0], grey[0].mean().expand(3, 5, 6), atol=1e-6)
    assert torch.allclose(colour.adjust_brightness(x, 2.0), (2 * x).clamp(0, 1))
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = torch.nn.functional.conv2d(x.reshape(6, 1, 5, 6), kernel[None, None]).reshape(2, 3, 3, 4)
    assert torch.allclose(colour.adjust_sharpness(x, 0.0), smooth, atol=1e-6)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    blurred = colour.gaussian_blur(impulse, 5, 1.0)
    g = [math.exp(-0.5 * d * d) for d in range(-2, 3)]
    assert float(blurred[0, 0, 4, 4]) == pytest.approx((g[2] / sum(g)) ** 2, rel=1e-5)  # separable Gaussian
    assert colour.blur_kernel_size(3.2) == 7 and colour.blur_kernel_size(2.6) == 5


def test_motion_augmentation_every_step():
    always = Probabilities(*[1.0] * 9)
    rng = random.Random(11)
    fgrs, phas, bgrs = torch.rand(5, 3, 30, 40), torch.rand(5, 1, 30, 40), torch.rand(5, 3, 36, 44)
    for _ in range(3):
        f, p, b = MotionAugmentation(24, always, rng=rng, generator=torch.Generator().manual_seed(1))(fgrs, phas, bgrs)
        assert f.shape == (5, 3, 24, 24) and p.shape == (5, 1, 24, 24) and b.shape == (5, 3, 24, 24)
        for t in (f, p, b):
            assert torch.isfinite(t).all() and float(t.min()) >= 0 and float(t.max()) <= 1
    # Validation: a plain resize, nothing random.
    f, p, b = MotionAugmentation.valid(24)(fgrs[:, :, :24, :24], phas[:, :, :24, :24], bgrs[:, :, :24, :24])
    assert torch.equal(f, fgrs[:, :, :24, :24]) and torch.equal(p, phas[:, :, :24, :24])


def test_pause_repeats_one_frame():
    augmentation = MotionAugmentation(8, rng=random.Random(4))
    frames = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 2, 2).clone()
    for _ in range(20):
        (paused,) = augmentation.pause(frames)
        values = paused[:, 0, 0, 0].tolist()
        assert values == sorted(values)  # order kept, only repeats
        assert set(values) <= set(range(8)) and values[0] == 0
        first = next((i for i in range(1, 8) if values[i] == values[i - 1]), None)
        if first is not None:  # one contiguous frozen span
            end = first
            while end < 8 and values[end] == values[first - 1]:
                end += 1
            assert values[end:] == list(range(end, 8))


# ---------------------------------------------------------------- the trainer's data hook
def test_training_root_gives_the_stage_passes(matting_tree, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(matting_tree / "vm", root / "VideoMatte240K_JPEG_SD")
    config = stage_config("bimatting", 3, size_lr=24, seq_lr=3, size_hr=32, seq_hr=2)
    with pytest.raises(InputError, match="BackgroundVideos"):  # backgrounds are required
        real_sources(root, config)
    shutil.copytree(matting_tree / "bgv", root / "BackgroundVideos" / "train")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 5:9] = 255
    _write(root / "SuperviselyPersonDataset/img/a.png", _flat(30, (16, 16, 3)))
    _write(root / "SuperviselyPersonDataset/seg/a.png", mask)
    random.seed(0)
    sources = real_sources(root, config)
    assert set(sources) == {"lr", "hr", "seg_image"}  # no YouTubeVIS, no COCO here
    sample = sources["lr"][0]
    assert {k: tuple(v.shape) for k, v in sample.items()} == {
        "fgr": (3, 3, 24, 24),
        "pha": (3, 1, 24, 24),
        "bgr": (3, 3, 24, 24),
    }
    assert tuple(sources["hr"][0]["fgr"].shape) == (2, 3, 32, 32)
    still = sources["seg_image"][0]
    assert tuple(still["img"].shape) == (1, 3, 24, 24) and tuple(still["seg"].shape) == (1, 1, 24, 24)
    assert any("seg_image" in note for note in sources.notes)
