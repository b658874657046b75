"""Reliability: failed writes keep the previous file, interrupted runs leave no corrupt output,
and long recurrent runs do not drift.

Failed writes are real: the writing process runs with RLIMIT_FSIZE (a file size limit, the
kernel refuses the write with EFBIG once SIGXFSZ is ignored), which is what a full disk looks
like to the program, without mounting anything. Each output kind is first written normally,
then rewritten under the limit: the command must fail with one clear line (exit 1), the
previous file must be byte-identical, and no temporary file may be left beside it.
(Tests run as root, where a read-only folder does not stop writes; an output "inside" a
regular file is the unwritable location used instead.)
"""

import hashlib
import importlib.resources
import importlib.util
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import bimatting
import bimatting.models.profile
from bench_models import tie_free_bimatting
from bimatting.cli import main
from bimatting.deploy.compiler.build import compile_model
from bimatting.matting.frames import to_nchw
from bimatting.matting.resume import get_states, set_states
from bimatting.matting.runner import TorchMatter, open_matter
from bimatting.models import build_model
from bimatting.weights.checkpoints import save_checkpoint
from bimatting.weights.rvm_onnx import official_onnx_path
from fuzz_inputs import TINY_SIZE, assert_clean_error, gradient_frames, tiny_matting_onnx, write_video

REPO = Path(__file__).resolve().parents[1]


def _limited(limit_bytes):
    """preexec_fn: the child may not grow any file beyond `limit_bytes` (writes fail with EFBIG)."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def _run(args, limit=None, timeout=300):
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, preexec_fn=_limited(limit) if limit else None
    )
    return done.returncode, done.stdout, done.stderr


def _cli(*args, limit=None, timeout=300):
    return _run([sys.executable, "-m", "bimatting", *map(str, args)], limit, timeout)


def _digest(path):
    path = Path(path)
    if path.is_dir():
        return {p.relative_to(path).as_posix(): _digest(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder, name):
    return [p.name for p in Path(folder).iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(tiny_matting_onnx(), str(path))
    return path


@pytest.fixture(scope="module")
def rvm_onnx():
    with official_onnx_path() as path:
        yield path


def _assert_kept(path, before, code, stderr):
    """A write under the limit failed cleanly and left the earlier file exactly as it was."""
    assert_clean_error(code, stderr, codes=(1,), fragment="could not write")
    assert (
        "File too large" in stderr and "previous file, if any, is unchanged" in stderr
    ) or "disk full or file size limit" in stderr, stderr
    assert _digest(path) == before
    assert not _leftovers(Path(path).parent, Path(path).name), "a temporary file was left behind"


# -- failed writes ---------------------------------------------------------------------------------

SAVE_NETWORK = """
import sys, torch
from bimatting.weights.checkpoints import save_checkpoint
from bimatting.models import build_model
from bimatting.weights.packed import save_packed
path, seed = sys.argv[1], int(sys.argv[2])
torch.manual_seed(seed)
network = build_model("bimatting").eval()
try:
    if path.endswith(".pth"):
        save_checkpoint(path, network, "bimatting")
    else:
        save_packed(path, network)
except Exception as error:  # the CLI's contract: one line, the error's exit code
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(getattr(error, "exit_code", 99))
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["net.pth", "net.npz"])
def test_failed_checkpoint_and_packed_writes_keep_the_previous_file(name, tmp_path):
    """save_checkpoint (.pth, ~17 MB) and save_packed (.npz, ~0.8 MB) under a 64 KiB file limit."""
    path = tmp_path / name
    assert _run([sys.executable, "-c", SAVE_NETWORK, str(path), "0"])[0] == 0
    before = _digest(path)
    code, _, err = _run([sys.executable, "-c", SAVE_NETWORK, str(path), "1"], limit=64 * 1024)
    _assert_kept(path, before, code, err)
    assert isinstance(bimatting.load_model(path), torch.nn.Module)  # the kept file still loads


@pytest.mark.timeout(300)
def test_failed_onnx_export_keeps_the_previous_file(tmp_path):
    out = tmp_path / "model.onnx"
    code, _, err = _cli("export", "--arch", "rvm", "-o", out)
    assert code == 0, err
    before = _digest(out)
    code, _, err = _cli("export", "--arch", "rvm", "-o", out, "--opset", "17", limit=256 * 1024)
    _assert_kept(out, before, code, err)


@pytest.mark.timeout(300)
def test_failed_artifact_and_report_writes_keep_the_previous_files(tiny_onnx, tmp_path):
    """A compiled artifact (tar and folder forms, written by deploy.artifact) and the bench report
    folder (JSON + PNGs), rewritten under a limit smaller than they are."""
    tar, folder, report = tmp_path / "tiny.tar", tmp_path / "tiny-art", tmp_path / "report"
    for out in (tar, folder):
        code, _, err = _cli("compile", tiny_onnx, "--target", "host", "-o", out, "--resolution", "24x16")
        assert code == 0, err
    code, _, err = _cli("bench", folder, "--frames", "2", "--warmup", "0", "--reference", tiny_onnx, "--report", report)
    assert code == 0, err
    before = {p: _digest(p) for p in (tar, folder, report)}
    library = tmp_path / "lib.so"
    library.write_bytes(os.urandom(200_000))  # the library to package: larger than the limit below
    rewrite = (
        f"from bimatting.deploy import artifact\n"
        f"import numpy as np, sys\n"
        f"try:\n"
        f"    artifact.write(sys.argv[1], r'{library}', {{'p0': np.zeros(10, np.float32)}}, {{'params': ['p0']}})\n"
        f"except Exception as error:\n"
        f"    print(f'Error: {{error}}', file=sys.stderr); sys.exit(getattr(error, 'exit_code', 99))\n"
    )
    for out in (tar, folder):
        code, _, err = _run([sys.executable, "-c", rewrite, str(out)], limit=100_000)
        _assert_kept(out, before[out], code, err)
    code, _, err = _cli(
        "bench", folder, "--frames", "2", "--warmup", "0", "--reference", tiny_onnx, "--report", report, limit=2_000
    )
    _assert_kept(report, before[report], code, err)
    code, _, err = _cli("bench", tar, "--frames", "1", "--warmup", "0", "--reference", tiny_onnx, limit=2_000)
    assert_clean_error(code, err, codes=(1,), fragment="cannot unpack artifact")  # its temp copy cannot be made
    code, _, err = _cli("bench", tar, "--frames", "1", "--warmup", "0", "--reference", tiny_onnx)
    assert code == 0, err  # the kept artifact still runs and verifies


@pytest.mark.timeout(300)
@pytest.mark.parametrize("output", ["out.avi", "pngs"])
def test_failed_matte_output_keeps_the_previous_one(output, rvm_onnx, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (30, 48, 64, 3), dtype=np.uint8)  # incompressible
    video = write_video(tmp_path / "clip.avi", list(noise))
    out = tmp_path / output
    args = ["matte", video, "-o", out, "--artifact", rvm_onnx, "--quiet", "--output-type", "foreground"]
    code, _, err = _cli(*args)
    assert code == 0, err
    before = _digest(out)
    assert min(p.stat().st_size for p in ([out] if out.is_file() else out.iterdir())) > 1024
    code, _, err = _cli(*args, "--background", "white", limit=1024)  # smaller than any file of the output
    assert_clean_error(code, err, codes=(1,), fragment="could not write")
    assert _digest(out) == before and not _leftovers(tmp_path, output)


def test_outputs_inside_a_regular_file_are_refused_up_front(tiny_onnx, rvm_onnx, tmp_path):
    """An unwritable location (as root a read-only folder is writable; a path under a regular
    file never is): exit 2, one line, before any work."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    video = write_video(tmp_path / "clip.avi", gradient_frames(2, 64, 48))
    for args in (
        ["compile", tiny_onnx, "--target", "host", "-o", blocker / "a.tar"],
        ["matte", video, "-o", blocker / "out.avi", "--artifact", rvm_onnx],
        ["export", "--arch", "rvm", "-o", blocker / "m.onnx"],
    ):
        code, _, err = _cli(*args)
        assert_clean_error(code, err, codes=(2,), fragment="does not exist")
    assert blocker.read_text() == "a file"


# -- interrupted runs ------------------------------------------------------------------------------


def _frames_done(log):
    """The last count the progress bar printed into `log` ("matte:  12%|...| 180/1500 ...")."""
    found = re.findall(r"\| *(\d+)/\d+ \[", log.read_text(errors="replace")) if log.exists() else []
    return int(found[-1]) if found else 0


def _interrupted_matte(args, log, after_frames, timeout=120):
    """Run `bimatting matte ARGS`, Ctrl-C (SIGINT) it once `after_frames` frames are done;
    returns (returncode, stdout, stderr)."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bimatting", "matte", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        began = time.monotonic()
        while _frames_done(log) < after_frames:
            assert process.poll() is None, (process.communicate(), log.read_text())
            assert time.monotonic() - began < timeout, "the run never got that far"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    return process.returncode, stdout, log.read_text()


def _video_frames(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame.astype(np.int16))
    capture.release()
    return frames


def _assert_interrupted(code, err, frames_at_least):
    assert code == 130 and "Traceback" not in err, err
    found = re.search(r"Interrupted after (\d+) frames; kept .* continue with the same command and --resume", err)
    assert found and int(found[1]) >= frames_at_least, err
    return int(found[1])


@pytest.mark.timeout(300)
def test_ctrl_c_keeps_a_playable_partial_video_and_resume_finishes_it(rvm_onnx, tmp_path):
    """Ctrl-C in the middle of a long clip: exit 130, the earlier output at OUTPUT untouched, the
    frames done kept as a playable partial video beside it; --resume then writes the whole clip.
    Frames after the interruption equal an uninterrupted run's exactly (the recurrent state is
    restored bit for bit); the kept ones went through the lossy codec once more (MJPG at the same
    quality: within 2 levels of 255)."""
    video = write_video(tmp_path / "long.avi", gradient_frames(400, 64, 48))
    args = [video, "--artifact", rvm_onnx]
    code, _, err = _cli("matte", *args, "-o", tmp_path / "straight.avi", "--quiet")
    assert code == 0, err
    out = tmp_path / "out.avi"
    write_video(out, gradient_frames(3, 64, 48))  # an earlier result at the same path
    before = _digest(out)
    code, _, err = _interrupted_matte([*args, "-o", out], tmp_path / "log", after_frames=40)
    kept = _assert_interrupted(code, err, 40)
    assert _digest(out) == before and not _leftovers(tmp_path, "out.avi")
    partial = tmp_path / "out.partial.avi"
    assert len(_video_frames(partial)) == kept and (tmp_path / "out.avi.resume.npz").is_file()

    code, stdout, err = _cli("matte", *args, "-o", out, "--resume", "--quiet")
    assert code == 0 and "matted 400 frames" in stdout, err
    assert not partial.exists() and not (tmp_path / "out.avi.resume.npz").exists()
    straight, resumed = _video_frames(tmp_path / "straight.avi"), _video_frames(out)
    assert len(resumed) == 400 and kept < 400
    assert max(int(np.abs(a - b).max()) for a, b in zip(straight[:kept], resumed[:kept])) <= 2
    assert all(np.array_equal(a, b) for a, b in zip(straight[kept:], resumed[kept:]))


@pytest.mark.timeout(300)
def test_resume_of_png_output_equals_an_uninterrupted_run(rvm_onnx, tmp_path):
    video = write_video(tmp_path / "long.avi", gradient_frames(300, 64, 48))
    args = [video, "--artifact", rvm_onnx, "--output-type", "alpha"]
    code, _, err = _cli("matte", *args, "-o", tmp_path / "straight", "--quiet")
    assert code == 0, err
    code, _, err = _interrupted_matte([*args, "-o", tmp_path / "out"], tmp_path / "log", after_frames=30)
    kept = _assert_interrupted(code, err, 30)
    assert not (tmp_path / "out").exists() and len(list((tmp_path / "out.partial").iterdir())) == kept < 300
    code, _, err = _cli(
        "matte",
        video,
        "--artifact",
        rvm_onnx,
        "-o",
        tmp_path / "out",
        "--resume",
        "--quiet",
        "--output-type",
        "composite",
    )  # not the interrupted run's options
    assert_clean_error(code, err, fragment="another input or other options")
    code, _, err = _cli("matte", *args, "-o", tmp_path / "never", "--resume", "--quiet")
    assert_clean_error(code, err, fragment="nothing to resume")
    code, _, err = _cli("matte", *args, "-o", tmp_path / "out", "--resume", "--quiet")
    assert code == 0, err
    assert _digest(tmp_path / "out") == _digest(tmp_path / "straight")  # every PNG byte-identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "long.avi", "out", "straight"]


def test_recurrent_state_round_trip_on_every_backend(tiny_onnx, tmp_path):
    """matte_resume.get_states / set_states: a fresh network given the saved state continues exactly
    like the one that ran the first frames (torch, onnxruntime and a compiled TVM artifact)."""
    frames = [f.astype(np.float32) / 255 for f in gradient_frames(6, *TINY_SIZE)]
    compile_model(tiny_onnx, "host", tmp_path / "tiny.tar", resolution=TINY_SIZE)
    makers = {
        "onnxruntime": lambda: open_matter(artifact=tiny_onnx),
        "tvm": lambda: open_matter(artifact=tmp_path / "tiny.tar"),
        "torch": lambda: TorchMatter(network),
    }
    network = build_model("rvm").eval()  # one network for both matters (random weights)
    for backend, make in makers.items():
        first, second = make(), make()
        for frame in frames[:3]:
            first.step(frame)
        second.step(frames[0])  # fixes size and ratio, as a resumed run's restore does
        set_states(second, [np.copy(a) for a in get_states(first)])
        for frame in frames[3:]:
            (fgr_a, pha_a), (fgr_b, pha_b) = first.step(frame), second.step(frame)
            assert np.array_equal(pha_a, pha_b) and np.array_equal(fgr_a, fgr_b), backend


# -- long recurrent runs ---------------------------------------------------------------------------


def _drift_module():
    spec = importlib.util.spec_from_file_location("bench_drift", REPO / "bench" / "drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_recurrent_drift_machinery_on_a_small_model(tiny_onnx, tmp_path):
    """bench/drift.py on the tiny model, 200 frames: TVM and onnxruntime stay within float32 ulps
    (pha in [0, 1]: ~1e-7), far below the 1e-4 tolerance; and the check can fail: a model whose
    compiled artifact is fed a different state is caught."""
    drift = _drift_module()
    result = drift.measure(str(tiny_onnx), frames=200, resolution=TINY_SIZE, progress=False)
    assert result["frames"] == 200 and result["passed"], result
    assert result["pha_mean_abs_max"] < 1e-6, result
    rows = [{"pha_mean": 0.0, "pha_max": 0.0, "fgr_mean": 0.0}] * 10 + [
        {"pha_mean": 2e-4, "pha_max": 1e-3, "fgr_mean": 0.0}
    ]
    failing = drift.summarise(rows, 1e-4)
    assert not failing["passed"] and failing["first_frame_over"] == 10


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_thousand_recurrent_frames_do_not_drift():
    """The issue's check: 1,000 recurrent frames of the packaged BiMatting, compiled for host at
    256x144, against onnxruntime; every frame's mean |pha diff| <= 1e-4 (bench/drift.py; ~10 min
    on 2 cores, opt-in: python -m pytest -m slow)."""
    if not (importlib.resources.files("bimatting") / "assets" / "bimatting_default.npz").is_file():
        pytest.skip("no packaged default model in this install (bench/drift.py --model CKPT runs any)")
    result = _drift_module().measure("default", frames=1000, resolution=(256, 144), progress=False, baseline=True)
    # on failure the message carries the baseline: onnxruntime against itself (optimizations on vs
    # off) shows how far this model's binary decisions amplify float rounding on their own
    assert result["passed"], result


@pytest.mark.parametrize(
    "argv,code", [(["profile", "--help"], 0), (["no-such-verb"], 2), (["profile", "--resolution", "bad"], 2)]
)
def test_entry_point_exit_codes(argv, code, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == code, capsys.readouterr()


def test_ctrl_c_anywhere_in_a_verb_exits_130_not_1(monkeypatch, capsys):
    """click alone would print "Aborted!" and exit 1; the entry point says "Interrupted." and exits 130."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bimatting.models.profile, "profile", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["profile"])
    err = capsys.readouterr().err
    assert stop.value.code == 130 and "Interrupted." in err and "Aborted" not in err, err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_thousand_recurrent_frames_without_near_ties_do_not_drift(tmp_path):
    """The compiler and the state feedback over 1,000 frames, on a BiMatting with no near tie on
    this footage (tests/bench_models.py: seeded random weights, sign thresholds moved into gaps of
    the values they see on the drift clip's 100 distinct frames, the ConvGRUs' decisions pushed to
    one side): a flipped bit can then only come from a wrong kernel or a corrupted state, so pha
    and fgr must stay within 1e-4 of onnxruntime on every frame. (The packaged model's own drift,
    where float32 rounding decides near-zero signs, is the test above.)"""
    drift = _drift_module()
    size = (256, 144)
    distinct = list(drift.footage(None, size, drift.CLIP_FRAMES))
    clip = torch.from_numpy(np.stack([to_nchw(f)[0] for f in distinct])[None])  # [1, 100, 3, H, W]
    network, margin = tie_free_bimatting(clip)
    assert margin > 2e-5, f"calibration left a near tie ({margin:.1e})"
    with torch.no_grad():
        fgr = network(clip[:, :8], return_coarse=False)[0]
    inside = (fgr > 0) & (fgr < 1)
    assert float((fgr - clip[:, :8])[inside].std()) > 0.01  # the fgr residual depends on the frames
    save_checkpoint(tmp_path / "tiefree.pth", network, "bimatting")
    result = drift.measure(str(tmp_path / "tiefree.pth"), frames=1000, resolution=size, progress=False)
    assert result["passed"] and result["fgr_mean_abs_max"] <= 1e-4, result
