"""Inputs for the fuzz and bad-input tests: a tiny matting ONNX, corruptions, media files.

Every generator is deterministic (fixed seeds), so a failing case id names the same bytes on
every run. Corruptions:

    truncations(data, count)        prefixes at evenly spread lengths (a download cut short)
    bit_flips(data, count, seed, regions)   one flipped bit per case at seeded offsets, drawn
                                    from `regions` [(start, end)] when given (e.g. a pickle)
"""

import subprocess
import sys

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bimatting.binops import functions as op_functions, layout, schema

TINY_SIZE = (24, 16)  # (W, H) of the frames the tiny model is run on (even: it upsamples by 2)


def tiny_matting_onnx(seed=0):
    """A small ONNX in RVM's interface (src, r1i..r4i -> fgr, pha, r1o..r4o) with a BinarizePack ->
    BinaryConv2d pair carrying its function bodies, as `bimatting export` writes them; runs in
    onnxruntime and through `bimatting matte --backend onnxruntime`."""
    rng = np.random.default_rng(seed)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    inits = {
        "w_stem": f32(8, 3, 3, 3) * 0.5,
        "b_stem": f32(8) * 0.1,
        "w_bin": layout.pack(f32(8, 8, 3, 3)),
        "s_bin": np.abs(f32(8)) * 0.05,
        "b_bin": f32(8) * 0.1,
        "w_pha": f32(1, 8, 1, 1) * 0.3,
        "w_fgr": f32(3, 8, 1, 1) * 0.3,
        "half": np.full((), 0.5, np.float32),
        "up": np.array([1, 1, 2, 2], np.float32),
    }
    node = helper.make_node
    nodes = [
        node(
            "Conv", ["src", "w_stem", "b_stem"], ["stem"], pads=[1, 1, 1, 1], strides=[2, 2], name="stem"
        ),  # [1,8,H/2,W/2] (RVM's r1 size)
        schema.make_node("BinarizePack", ["stem"], ["packed"], name="pack"),
        schema.make_node(
            "BinaryConv2d",
            ["packed", "w_bin", "s_bin", "b_bin"],
            ["bin"],
            name="bconv",
            channels_in=8,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        node("Mul", ["r1i", "half"], ["r1h"], name="decay"),
        node("Add", ["bin", "r1h"], ["r1o"], name="state"),  # (+ [1,1,1,1] zeros at frame 0)
        node("Resize", ["r1o", "", "up"], ["r1_up"], mode="nearest", name="up"),  # [1,8,H,W] (H, W even)
        node("Conv", ["r1_up", "w_pha"], ["pha_logit"], name="head_pha"),
        node("Sigmoid", ["pha_logit"], ["pha"], name="pha"),
        node("Conv", ["r1_up", "w_fgr"], ["fgr_logit"], name="head_fgr"),
        node("Sigmoid", ["fgr_logit"], ["fgr"], name="fgr"),
        node("Identity", ["r2i"], ["r2o"], name="keep2"),
        node("Identity", ["r3i"], ["r3o"], name="keep3"),
        node("Identity", ["r4i"], ["r4o"], name="keep4"),
    ]
    image = [1, 3, "height", "width"]
    # states: static channels (a compiler needs them), dynamic sizes
    states_in = {k: [1, 8 if k == 1 else 1, f"h{k}", f"w{k}"] for k in range(1, 5)}
    states_out = {**states_in, 1: [1, 8, "h", "w"]}
    graph = helper.make_graph(
        nodes,
        "tiny_matting",
        [helper.make_tensor_value_info("src", TensorProto.FLOAT, image)]
        + [helper.make_tensor_value_info(f"r{k}i", TensorProto.FLOAT, states_in[k]) for k in range(1, 5)],
        [
            helper.make_tensor_value_info("fgr", TensorProto.FLOAT, image),
            helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, "height", "width"]),
        ]
        + [helper.make_tensor_value_info(f"r{k}o", TensorProto.FLOAT, states_out[k]) for k in range(1, 5)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", schema.MIN_OPSET),
            helper.make_opsetid(schema.DOMAIN, schema.DOMAIN_VERSION),
        ],
        functions=op_functions.functions(used={"BinarizePack", "BinaryConv2d"}),
    )
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def truncations(data, count):
    """`count` prefixes of `data` (lengths spread over the whole file, 0 excluded)."""
    lengths = np.unique(np.linspace(1, len(data) - 1, count).astype(int))
    return [(f"cut{int(n)}", data[: int(n)]) for n in lengths]


def bit_flips(data, count, seed, regions=None):
    """`count` copies of `data` with one bit flipped each, at seeded offsets inside `regions`."""
    rng = np.random.default_rng(seed)
    regions = regions or [(0, len(data))]
    sizes = np.array([end - start for start, end in regions], float)
    cases = []
    for _ in range(count):
        start, end = regions[rng.choice(len(regions), p=sizes / sizes.sum())]
        offset, bit = int(rng.integers(start, end)), int(rng.integers(8))
        flipped = bytearray(data)
        flipped[offset] ^= 1 << bit
        cases.append((f"flip{offset}.{bit}", bytes(flipped)))
    return cases


def write_video(path, frames, fps=10.0, fourcc="MJPG"):
    """Write RGB uint8 frames [H, W, 3] with OpenCV (MJPG in .avi: decodable everywhere)."""
    height, width = frames[0].shape[:2] if len(frames) else (16, 16)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def gradient_frames(count, width, height, seed=0):
    """Smooth moving colour frames [H, W, 3] uint8 (compress well; something to matte)."""
    rng = np.random.default_rng(seed)
    base = rng.random(3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        phase = (x / max(width, 1) + y / max(height, 1) + 0.05 * t)[..., None]
        frames.append(((0.5 + 0.5 * np.sin(6.0 * phase + base * 6.0)) * 255).astype(np.uint8))
    return frames


def run_cli(*args, timeout=120, cwd=None):
    """`bimatting ARGS` in a fresh process: (returncode, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "bimatting", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    return done.returncode, done.stdout, done.stderr


def assert_clean_error(returncode, stderr, codes=(2,), fragment=""):
    """The CLI's contract for a deliberate error: exit code in `codes`, exactly one line on stderr
    that starts with "Error:" (progress bars aside), no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not _is_progress(line)]
    assert returncode in codes, f"exit {returncode}: {stderr}"
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


def _is_progress(line):
    # tqdm redraws with carriage returns; a bar line holds '|' and an 'it/s'-like rate or a percentage
    return "\r" in line or ("%|" in line)


def assert_one_line(error, fragment=""):
    """A library InputError/RuntimeFailure: one line, with `fragment`."""
    message = str(error)
    assert "\n" not in message and message.strip(), repr(message)
    assert fragment in message, message
    return message
