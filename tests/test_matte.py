"""`bimatting matte`: real videos in and out through OpenCV, recurrent state across frames, the
backends agreeing on the same network, PNG folders, and bad input refused before any output."""

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import bench_models
import bimatting
from bimatting.cli import cli
from bimatting.deploy.compiler.build import compile_model
from bimatting.downsample import auto_downsample_ratio
from bimatting.matting.frames import read_frames, to_nchw
from bimatting.matting.runner import export_in_memory, open_matter, parse_ratio
from bimatting.matting.samples import sample_frames
from bimatting.weights.checkpoints import save_checkpoint
from bimatting.weights.rvm_onnx import official_onnx_path

SIZE = (512, 288)  # (width, height), RVM's low-resolution evaluation size
SMALL = (256, 144)
FRAMES = 12
# The export issue's bounds for the same network on two backends (pha in [0, 1]).
PHA_MEAN_TOLERANCE = 1e-4
PHA_MAX_TOLERANCE = 1e-2


def write_video(path, frames, fps=24):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(cv2.cvtColor((frame * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def video_info(path):
    """(frames decoded, (width, height), fps, list of frames as uint8 RGB)."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return len(frames), (frames[0].shape[1], frames[0].shape[0]) if frames else None, fps, frames


@pytest.fixture(scope="module")
def bedroom_frames(bedroom_frames_dir):
    return read_frames(bedroom_frames_dir, size=SIZE, limit=FRAMES)


@pytest.fixture(scope="module")
def small_bedroom_frames(bedroom_frames_dir):
    """6 real frames at 256x144: the backend comparisons run PyTorch, which is slow on two cores."""
    return read_frames(bedroom_frames_dir, size=SMALL, limit=6)


@pytest.fixture(scope="module")
def bedroom_mp4(bedroom_frames, tmp_path_factory):
    """12 frames of real footage with people, 512x288, as an mp4 (what a user would pass)."""
    return write_video(tmp_path_factory.mktemp("video") / "bedroom.mp4", bedroom_frames)


def invoke(*args):
    return CliRunner().invoke(cli, ["matte", *map(str, args)], catch_exceptions=False)


def pha_diffs(a, b):
    diff = np.abs(np.stack(a) - np.stack(b))
    return float(diff.mean()), float(diff.max())


def run_clip(matter, frames):
    return [matter.step(frame)[1] for frame in frames]


# -- a real video end to end ---------------------------------------------------------------------


def test_matte_real_video_keeps_count_size_and_rate(bedroom_mp4, tmp_path):
    out = tmp_path / "out.mp4"
    result = invoke(
        bedroom_mp4,
        "-o",
        out,
        "--checkpoint",
        "rvm",
        "--backend",
        "onnxruntime",
        "--output-type",
        "all",
        "--quiet",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    alpha_path, fgr_path = tmp_path / "out_alpha.mp4", tmp_path / "out_foreground.mp4"
    assert summary["outputs"] == [str(out), str(alpha_path), str(fgr_path)]
    assert summary["frames"] == FRAMES and summary["downsample_ratio"] == 1.0  # auto at 512 px long side
    for path in (out, alpha_path, fgr_path):
        count, size, fps, _ = video_info(path)
        assert (count, size) == (FRAMES, SIZE), path
        assert fps == pytest.approx(24.0)
    # Footage with people: the matte is neither empty nor everything (decoded from the lossy video,
    # which moves values near 0.5 only a little).
    _, _, _, alphas = video_info(alpha_path)
    above = np.mean(np.stack(alphas)[..., 0] > 127)
    assert 0.02 < above < 0.98, f"fraction of pixels with alpha > 0.5: {above:.4f}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out_alpha.mp4", "out_foreground.mp4"]


@pytest.fixture(scope="module")
def rvm_checkpoint(tmp_path_factory):
    """RVM's official weights as a project checkpoint: a float network, so the backends must agree
    without any help (no sign decisions that float rounding could flip)."""
    path = tmp_path_factory.mktemp("ckpt") / "rvm.pth"
    save_checkpoint(path, bimatting.load_model("rvm"), "rvm")
    return path


@pytest.fixture(scope="module")
def rvm_host_artifact(rvm_checkpoint, tmp_path_factory):
    """The same RVM exported and compiled by TVM for this machine at 256x144 (~20 s)."""
    folder = tmp_path_factory.mktemp("tvm")
    onnx.save(export_in_memory(rvm_checkpoint), str(folder / "rvm.onnx"))
    compile_model(folder / "rvm.onnx", "host", folder / "rvm-host.tar", resolution=SMALL)
    return folder / "rvm-host.tar"


def test_rvm_backends_agree_over_a_clip(rvm_checkpoint, rvm_host_artifact, small_bedroom_frames):
    """The same network on every backend, states carried over real frames: torch, onnxruntime on the
    in-memory export, onnxruntime on RVM's official file ('rvm'), TVM on the compiled export."""
    frames = small_bedroom_frames
    reference = run_clip(open_matter(rvm_checkpoint, backend="torch"), frames)
    others = {
        "onnxruntime (exported in memory)": open_matter(rvm_checkpoint, backend="onnxruntime"),
        "onnxruntime (official file)": open_matter("rvm", backend="onnxruntime"),
        "tvm (compiled for host)": open_matter(artifact=rvm_host_artifact, backend="tvm"),
    }
    for name, matter in others.items():
        mean, worst = pha_diffs(reference, run_clip(matter, frames))
        assert mean <= PHA_MEAN_TOLERANCE and worst <= PHA_MAX_TOLERANCE, (name, mean, worst)
    # The state matters: frame 5 without its history gives another matte.
    fresh = open_matter(rvm_checkpoint, backend="torch").step(frames[5])[1]
    assert np.abs(fresh - reference[5]).max() > 10 * PHA_MAX_TOLERANCE


def test_the_matte_command_runs_an_artifact_on_the_tvm_runtime_alone(rvm_host_artifact, small_bedroom_frames, tmp_path):
    """`bimatting matte --artifact` as a board runs it: the TVM runtime library only (no compiler
    library, no torch), and the same alpha as the TVM backend in a process that has both."""
    video = write_video(tmp_path / "clip.mp4", small_bedroom_frames[:3])
    report = tmp_path / "loaded.txt"
    probe = (
        "import atexit, sys\n"
        "def report():\n"
        "    import tvm.base\n"
        f"    open({str(report)!r}, 'w').write(' '.join(sorted(tvm.base._LOADED_LIBS)) + "
        "' torch=' + str(sys.modules.get('torch') is not None))\n"
        "atexit.register(report)\n"
        "from bimatting.cli import main\n"
        "sys.argv = ['bimatting'] + sys.argv[1:]\n"
        "main()\n"
    )
    out = tmp_path / "alpha"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "matte",
            str(video),
            "-o",
            str(out),
            "--quiet",
            "--output-type",
            "alpha",
            "--artifact",
            str(rvm_host_artifact),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert report.read_text() == "tvm_runtime torch=False", report.read_text()
    expected = run_clip(open_matter(artifact=rvm_host_artifact, backend="tvm"), read_frames(video))
    written = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(out.iterdir())]
    assert len(written) == 3
    for ours, theirs in zip(written, expected):
        assert np.abs(ours.astype(np.float32) / 255 - np.squeeze(theirs)).max() <= 1 / 255 + 1e-6


def test_tvm_artifact_refuses_other_sizes_and_ratios(rvm_host_artifact, tmp_path):
    video = write_video(tmp_path / "clip.mp4", sample_frames(2, size=(128, 72)))
    result = CliRunner().invoke(
        cli, ["matte", str(video), "-o", str(tmp_path / "o.mp4"), "--quiet", "--artifact", str(rvm_host_artifact)]
    )
    assert result.exit_code == 2 and "compiled for 256x144" in result.output, result.output
    result = CliRunner().invoke(
        cli,
        [
            "matte",
            str(video),
            "-o",
            str(tmp_path / "o.mp4"),
            "--quiet",
            "--artifact",
            str(rvm_host_artifact),
            "--downsample-ratio",
            "0.5",
        ],
    )
    assert result.exit_code == 2 and "downsample ratio 1, not 0.5" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.fixture(scope="module")
def tie_free_checkpoint(tmp_path_factory):
    """A random-init BiMatting whose sign thresholds sit in gaps of the values they see on the
    packaged clip (tests/bench_models.py), saved as a project checkpoint.

    Why not plain random init: a random binary network is chaotic at float precision. Runtimes
    sum in different orders, a pre-sign value within ~1e-5 of zero takes the other sign and the
    flip cascades: PyTorch against itself with 1e-6 input noise already differs by ~0.09 mean in
    pha, so no backend could match another. With no near ties on the clip, a correct backend
    agrees to float precision and a wrong one does not.
    """
    clip = sample_frames(bench_models.FRAMES, bench_models.SIZE)
    network, margin = bench_models.tie_free_bimatting(torch.from_numpy(np.stack([to_nchw(f)[0] for f in clip])[None]))
    assert margin > 2e-5, f"calibration left a near tie ({margin:.1e})"
    path = tmp_path_factory.mktemp("ckpt") / "tiefree.pth"
    save_checkpoint(path, network, "bimatting")
    return path, clip


def test_bimatting_backends_agree(tie_free_checkpoint, tmp_path):
    """BiMatting on torch, on onnxruntime (exported in memory) and on TVM (that export compiled for
    this machine), states carried over the clip: within the export issue's tolerances."""
    checkpoint, clip = tie_free_checkpoint
    onnx.save(export_in_memory(checkpoint), str(tmp_path / "tiefree.onnx"))
    width, height = clip[0].shape[1], clip[0].shape[0]
    compile_model(tmp_path / "tiefree.onnx", "host", tmp_path / "tiefree-host.tar", resolution=(width, height))
    reference = run_clip(open_matter(checkpoint, backend="torch"), clip)
    assert np.std(reference) > 0.05  # a data-dependent matte, not a constant
    for backend, matter in (
        ("onnxruntime", open_matter(checkpoint, backend="onnxruntime")),
        ("tvm", open_matter(artifact=tmp_path / "tiefree-host.tar", backend="tvm")),
    ):
        mean, worst = pha_diffs(reference, run_clip(matter, clip))
        assert mean <= PHA_MEAN_TOLERANCE and worst <= PHA_MAX_TOLERANCE, (backend, mean, worst)


# -- PNG folders, start and frame count ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for index, frame in enumerate(sample_frames(10, size=(128, 72))):
        cv2.imwrite(
            str(folder / f"{index:03d}.png"), cv2.cvtColor((frame * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
        )
    return folder


def test_png_folder_outputs_start_and_frames(small_folder, tmp_path):
    out = tmp_path / "out"
    start = 3 / 30  # image folders count as 30 frames/s: start at the 4th image
    result = invoke(
        small_folder,
        "-o",
        out,
        "--checkpoint",
        "rvm",
        "--output-type",
        "all",
        "--rgba",
        "--start",
        start,
        "--frames",
        4,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    alpha = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((out / "alpha").glob("*.png"))]
    fgr = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((out / "foreground").glob("*.png"))]
    comp = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((out / "composite").glob("*.png"))]
    assert len(alpha) == len(fgr) == len(comp) == 4
    assert alpha[0].shape == (72, 128) and alpha[0].dtype == np.uint8  # 8-bit grayscale
    assert fgr[0].shape == (72, 128, 4) and comp[0].shape == (72, 128, 3)  # RGBA, RGB
    assert all(np.array_equal(f[..., 3], a) for f, a in zip(fgr, alpha))  # RGBA's alpha is the matte
    # Same frames straight through the library, starting at image 3 with a fresh state.
    frames = read_frames(small_folder)[3:7]
    expected = [(np.clip(p, 0, 1) * 255 + 0.5).astype(np.uint8) for p in run_clip(open_matter("rvm"), frames)]
    assert all(np.array_equal(a, e) for a, e in zip(alpha, expected))
    # Composite = fgr * pha + green * (1 - pha) within 8-bit rounding.
    green = np.array([155, 255, 120], np.float32)  # BGR of RVM's (120, 255, 155)
    a = alpha[0][..., None] / 255.0
    assert np.abs(fgr[0][..., :3] * a + green * (1 - a) - comp[0]).max() <= 2.0


def test_auto_ratio_is_rvms_rule():
    assert auto_downsample_ratio(288, 512) == 1.0
    assert auto_downsample_ratio(1080, 1920) == pytest.approx(512 / 1920)
    assert auto_downsample_ratio(2160, 3840) == pytest.approx(512 / 3840)
    assert parse_ratio("auto") == "auto" and parse_ratio("0.25") == 0.25


# -- bad input: one line, exit 2, nothing written ------------------------------------------------


def _bad_inputs(tmp_path, video):
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("no frames here")
    return {
        "missing video": [tmp_path / "missing.mp4", "-o", tmp_path / "o.mp4"],
        "unreadable video": [tmp_path / "garbage.mp4", "-o", tmp_path / "o.mp4"],
        "folder without images": [tmp_path / "no_images", "-o", tmp_path / "o.mp4"],
        "unknown backend": [video, "-o", tmp_path / "o.mp4", "--backend", "tensorflow"],
        "output folder missing": [video, "-o", tmp_path / "nowhere" / "o.mp4"],
        "output folder missing (PNGs)": [video, "-o", tmp_path / "nowhere" / "pngs"],
        "missing checkpoint": [video, "-o", tmp_path / "o.mp4", "--checkpoint", tmp_path / "x.pth"],
        "bad ratio": [video, "-o", tmp_path / "o.mp4", "--downsample-ratio", "1.5"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing video",
        "unreadable video",
        "folder without images",
        "unknown backend",
        "output folder missing",
        "output folder missing (PNGs)",
        "missing checkpoint",
        "bad ratio",
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(case, tmp_path):
    video = write_video(tmp_path / "clip.mp4", sample_frames(3, size=(64, 48)))
    args = _bad_inputs(tmp_path, video)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["matte", *map(str, args), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no partial or temporary output


def test_failure_after_outputs_opened_leaves_nothing(tmp_path):
    """RVM's official ONNX pinned to 128x72 fails on the first 64x48 frame, after the writers opened."""
    with official_onnx_path() as path:
        model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim  # src [B,3,H,W]
    for dim, value in zip(dims, (1, 3, 72, 128)):
        dim.dim_value = value
    onnx.save(model, str(tmp_path / "static.onnx"))
    video = write_video(tmp_path / "clip.mp4", sample_frames(3, size=(64, 48)))
    for output, kind in (("o.mp4", "composite"), ("pngs", "all")):
        result = CliRunner().invoke(
            cli,
            [
                "matte",
                str(video),
                "-o",
                str(tmp_path / output),
                "--quiet",
                "--artifact",
                str(tmp_path / "static.onnx"),
                "--output-type",
                kind,
            ],
        )
        assert result.exit_code == 2 and "exported for input" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "static.onnx"]


def test_python_api_mattes_a_real_clip_with_a_checkpoint_and_an_artifact(
    rvm_checkpoint, rvm_host_artifact, small_bedroom_frames, tmp_path
):
    """`bimatting.matte(...)`, the Python entry point: what it returns is what it wrote, and the
    8-bit mattes are the network's alpha (run here frame by frame, states carried) for a PyTorch
    checkpoint and for the compiled artifact of the same network."""
    frames = small_bedroom_frames[:4]
    video = write_video(tmp_path / "clip.mp4", frames)
    decoded = read_frames(video)  # what the API reads back: the mp4's decoded frames
    reference = run_clip(open_matter(rvm_checkpoint, backend="torch"), decoded)
    for name, model in (("checkpoint", rvm_checkpoint), ("artifact", rvm_host_artifact)):
        out = tmp_path / f"alpha-{name}"
        written = bimatting.matte(video, out, model=model, output_type="alpha", progress=False)
        assert written["outputs"] == [str(out)] and written["frames"] == len(frames)
        assert written["backend"] == ("torch" if name == "checkpoint" else "tvm")
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == len(frames)
        for png, alpha in zip(pngs, reference):
            image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).astype(np.int32)
            expected = np.clip(np.asarray(alpha).reshape(image.shape) * 255 + 0.5, 0, 255).astype(np.int32)
            assert np.abs(image - expected).max() <= 3, (name, png.name)  # 1e-2 backends + rounding
    with pytest.raises(bimatting.InputError, match="does not exist"):
        bimatting.matte(video, tmp_path / "x.mp4", model=tmp_path / "missing.tar")
