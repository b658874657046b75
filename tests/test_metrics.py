"""Metrics equal independent direct computations (loops, a BFS flood fill, hand-worked cases), and
`bimatting evaluate` on a tiny tree written here reports those numbers with RVM's aggregation.

The references below are written differently from bimatting.eval.metrics on purpose: float64
Python loops instead of float32 numpy/OpenCV. Tolerances: the implementation computes in float32
like the official evaluators, so sums over a few hundred pixels agree to ~1e-5 relative.
"""

import json
import math
from collections import deque

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from bimatting.cli import cli
from bimatting.eval import metrics
from bimatting.eval.evaluate import ClipScores, aggregate, evaluate

REL = 1e-5  # float32 implementation vs float64 reference (see module docstring)


# ---------------------------------------------------------------- independent references
def ref_mad(p, t):
    return 1e3 * sum(abs(float(a) - float(b)) for a, b in zip(p.ravel(), t.ravel())) / p.size


def ref_mse(p, t):
    return 1e3 * sum((float(a) - float(b)) ** 2 for a, b in zip(p.ravel(), t.ravel())) / p.size


def ref_kernel():
    # G(y) G'(x) = -x/sigma^2 * exp(-(x^2 + y^2) / (2 sigma^2)) / (2 pi sigma^2); constants cancel
    # in the L2 normalisation. half = 4 was worked by hand: 1.4*sqrt(-2 ln(0.035093)) = 3.62 -> 4.
    k = np.zeros((9, 9))
    for i in range(9):
        for j in range(9):
            y, x = i - 4, j - 4
            k[i, j] = -x * math.exp(-(x * x + y * y) / (2 * 1.4**2))
    return k / math.sqrt((k**2).sum())


def ref_correlate_replicate(image, kernel):
    h, w = image.shape
    r = kernel.shape[0] // 2
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            acc = 0.0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy = min(max(y + dy, 0), h - 1)
                    xx = min(max(x + dx, 0), w - 1)
                    acc += kernel[dy + r, dx + r] * float(image[yy, xx])
            out[y, x] = acc
    return out


def ref_grad(p, t, normalize=True):
    def minmax(a):
        a = a.astype(np.float64)
        lo, hi = a.min(), a.max()
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)

    k = ref_kernel()
    mags = []
    for a in (p, t):
        a = minmax(a) if normalize else a.astype(np.float64)
        gx = ref_correlate_replicate(a, k)
        gy = ref_correlate_replicate(a, k.T)
        mags.append(np.sqrt(gx**2 + gy**2))
    total = 0.0
    for gp, gt in zip(mags[0].ravel(), mags[1].ravel()):
        total += (gt - gp) ** 2
    return total / 1000


def bfs_largest_component(mask):
    """Largest 4-connected True region by flood fill; ties go to the one met first in raster order."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best = []
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            region, queue = [], deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                region.append((y, x))
                for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        queue.append((yy, xx))
            if len(region) > len(best):
                best = region
    out = np.zeros_like(mask, dtype=bool)
    for y, x in best:
        out[y, x] = True
    return out


def ref_conn(p, t):
    thresholds = [i / 10 for i in range(11)]
    level = np.full(t.shape, -1.0)
    for i in range(1, 11):
        omega = bfs_largest_component((t >= thresholds[i]) & (p >= thresholds[i]))
        for y in range(t.shape[0]):
            for x in range(t.shape[1]):
                if level[y, x] == -1 and not omega[y, x]:
                    level[y, x] = thresholds[i - 1]
    level[level == -1] = 1
    total = 0.0
    for y in range(t.shape[0]):
        for x in range(t.shape[1]):
            dt, dp = float(t[y, x]) - level[y, x], float(p[y, x]) - level[y, x]
            phi_t = 1 - dt if dt >= 0.15 else 1.0
            phi_p = 1 - dp if dp >= 0.15 else 1.0
            total += abs(phi_t - phi_p)
    return total / 1000


def ref_dtssd(p, p_prev, t, t_prev):
    s = sum(
        ((float(a) - float(b)) - (float(c) - float(d))) ** 2
        for a, b, c, d in zip(p.ravel(), p_prev.ravel(), t.ravel(), t_prev.ravel())
    )
    return 100 * math.sqrt(s / t.size)


def ref_fgr(pf, tf, tp, square):
    values = []
    for y in range(tp.shape[0]):
        for x in range(tp.shape[1]):
            if tp[y, x] > 0:
                for c in range(3):
                    d = float(pf[y, x, c]) - float(tf[y, x, c])
                    values.append(d * d if square else abs(d))
    return 1e3 * sum(values) / len(values)


def quantised(rng, shape):
    """Random uint8-valued float32 images, the values the evaluator reads from files."""
    return rng.integers(0, 256, shape).astype(np.float32) / 255


def soft_blob(rng, h, w):
    """A smooth blob with soft edges plus noise: realistic alpha with several components."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.clip(1.5 - np.hypot((yy - h / 2) / (h / 3), (xx - w / 2) / (w / 3)), 0, 1)
    a = np.clip(a + rng.normal(0, 0.15, (h, w)), 0, 1)
    return (np.round(a * 255) / 255).astype(np.float32)


# ---------------------------------------------------------------- per-metric checks
@pytest.mark.parametrize("seed", range(3))
def test_mad_mse_dtssd_fgr_match_loops(seed):
    rng = np.random.default_rng(seed)
    p, t, p0, t0 = (quantised(rng, (6, 7)) for _ in range(4))
    t[0, :3] = 0  # some pixels without foreground
    pf, tf = quantised(rng, (6, 7, 3)), quantised(rng, (6, 7, 3))
    assert metrics.pha_mad(p, t) == pytest.approx(ref_mad(p, t), rel=REL)
    assert metrics.pha_mse(p, t) == pytest.approx(ref_mse(p, t), rel=REL)
    assert metrics.pha_dtssd(p, p0, t, t0) == pytest.approx(ref_dtssd(p, p0, t, t0), rel=REL)
    assert metrics.fgr_mad(pf, tf, t) == pytest.approx(ref_fgr(pf, tf, t, False), rel=REL)
    assert metrics.fgr_mse(pf, tf, t) == pytest.approx(ref_fgr(pf, tf, t, True), rel=REL)


def test_hand_worked_values():
    p = np.full((2, 2), 0.5, np.float32)
    z = np.zeros((2, 2), np.float32)
    assert metrics.pha_mad(p, z) == pytest.approx(500)  # |0.5| x 1e3
    assert metrics.pha_mse(p, z) == pytest.approx(250)  # 0.25 x 1e3
    assert metrics.pha_dtssd(p, z, z, z) == pytest.approx(50)  # sqrt(4 * 0.25 / 4) x 1e2
    # Only the pixel with t > 0 counts, with its 3 values: |0.2| x 1e3 and 0.04 x 1e3.
    t = np.array([[0, 0], [0, 0.5]], np.float32)
    pf, tf = np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32)
    pf[0, 0] = 1.0  # masked out: true alpha is 0 there
    pf[1, 1] = 0.2
    assert metrics.fgr_mad(pf, tf, t) == pytest.approx(200)
    assert metrics.fgr_mse(pf, tf, t) == pytest.approx(40)
    assert math.isnan(metrics.fgr_mad(pf, tf, z))  # no foreground at all


def test_gradient_kernel_is_evaluators():
    h_x, h_y = metrics.gradient_kernels()
    assert h_x.shape == (9, 9)
    np.testing.assert_allclose(h_x, ref_kernel(), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(h_y, h_x.T)
    assert (h_x**2).sum() == pytest.approx(1.0)
    # Derivative along x: a horizontal ramp has negative response (kernel weights -x on the right).
    assert h_x[4, 5] < 0 < h_x[4, 3] and h_x[4, 4] == 0


@pytest.mark.parametrize("normalize", [True, False])
def test_grad_matches_loops(normalize):
    rng = np.random.default_rng(4)
    p, t = soft_blob(rng, 9, 11), soft_blob(rng, 9, 11)
    p[0, 0], t[0, 0] = 0.3, 0.6  # keep min-max normalisation non-trivial
    expected = ref_grad(p, t, normalize)
    assert metrics.pha_grad(p, t, normalize=normalize) == pytest.approx(expected, rel=1e-4)
    assert metrics.pha_grad(t, t, normalize=normalize) == 0


def test_grad_minmax_normalisation_matters():
    # LR normalises each map to [0, 1]: a half-strength copy scores 0; HR does not normalise.
    t = soft_blob(np.random.default_rng(5), 8, 8)
    half = t * 0.5
    assert metrics.pha_grad(half, t, normalize=True) == pytest.approx(0, abs=1e-9)
    assert metrics.pha_grad(half, t, normalize=False) > 1e-4


def test_conn_hand_worked():
    # t = [1 1 0 1], p = [1 1 0 .5]: at every threshold the largest component is {0, 1}, so
    # pixels 2, 3 get level 0 at theta_1 and pixels 0, 1 end at 1. phi_t = [1 1 1 0],
    # phi_p = [1 1 1 .5] -> 0.5 / 1e3.
    t = np.array([[1, 1, 0, 1]], np.float32)
    p = np.array([[1, 1, 0, 0.5]], np.float32)
    assert metrics.pha_conn(p, t) == pytest.approx(0.5e-3, rel=1e-6)
    # Both pixels pass thresholds up to 0.30000000000000004, none passes 0.4: level 0.3 for both;
    # d_t = 0.05 < 0.15 -> phi_t = 1; d_p = [0.05, 0.6] -> phi_p = [1, 0.4] -> 0.6 / 1e3.
    t = np.array([[0.35, 0.35]], np.float32)
    p = np.array([[0.35, 0.9]], np.float32)
    assert metrics.pha_conn(p, t) == pytest.approx(0.6e-3, rel=1e-6)
    assert metrics.pha_conn(t, t) == 0


def test_conn_uses_4_connectivity():
    # Two diagonal pixels are two components under 4-connectivity: the lone one is not in omega.
    t = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    mask = t > 0.5
    np.testing.assert_array_equal(metrics.largest_component(mask), bfs_largest_component(mask))
    assert metrics.largest_component(mask).sum() == 2


@pytest.mark.parametrize("seed", range(4))
def test_conn_matches_bfs_reference(seed):
    rng = np.random.default_rng(10 + seed)
    t = soft_blob(rng, 12, 14)
    p = np.clip(t + quantised(rng, (12, 14)) * 0.6 - 0.3, 0, 1).astype(np.float32)
    p = (np.round(p * 255) / 255).astype(np.float32)
    assert metrics.pha_conn(p, t) == pytest.approx(ref_conn(p, t), rel=1e-5, abs=1e-9)


# ---------------------------------------------------------------- aggregation
def _scores(values):
    return ClipScores(
        clip=None, frames=[f"{i:04d}.png" for i in range(len(values))], per_frame={"pha_mad": list(values)}
    )


def test_aggregation_per_frame_index_then_mean():
    # Clip A [1 2 3], clip B [3 4]: per index 2, 3, 3 -> 8/3 (the plain frame mean would be 13/5).
    assert aggregate([_scores([1, 2, 3]), _scores([3, 4])], "pha_mad") == pytest.approx(8 / 3)
    assert aggregate([_scores([1, 2]), _scores([3, 6])], "pha_mad") == pytest.approx(3)


# ---------------------------------------------------------------- evaluate on a tree
def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.round(image * 255).astype(np.uint8))


@pytest.fixture
def tiny_trees(tmp_path):
    """Truth and prediction trees: 2 subsets, clips of 3 and 2 frames, 10x12 px."""
    rng = np.random.default_rng(7)
    frames = {("videomatte_motion", "0000"): 3, ("videomatte_static", "0000"): 2}
    arrays = {}
    for (subset, clip), count in frames.items():
        for k in range(count):
            for root in ("true", "pred"):
                pha = soft_blob(rng, 10, 12)
                fgr = quantised(rng, (10, 12, 3))
                _write(tmp_path / root / subset / clip / "pha" / f"{k:04d}.png", pha)
                _write(tmp_path / root / subset / clip / "fgr" / f"{k:04d}.png", fgr)
                arrays[root, subset, clip, k] = (pha, fgr[..., ::-1])  # cv2 writes BGR; pooled anyway
    return tmp_path, frames, arrays


def _expected(frames, arrays):
    per_clip = {m: [] for m in metrics.LR_METRICS}
    for (subset, clip), count in frames.items():
        rows = {m: [] for m in metrics.LR_METRICS}
        for k in range(count):
            p, pf = arrays["pred", subset, clip, k]
            t, tf = arrays["true", subset, clip, k]
            rows["pha_mad"].append(ref_mad(p, t))
            rows["pha_mse"].append(ref_mse(p, t))
            rows["pha_grad"].append(ref_grad(p, t))
            rows["pha_conn"].append(ref_conn(p, t))
            if k == 0:
                rows["pha_dtssd"].append(0.0)
            else:
                p0, t0 = arrays["pred", subset, clip, k - 1][0], arrays["true", subset, clip, k - 1][0]
                rows["pha_dtssd"].append(ref_dtssd(p, p0, t, t0))
            rows["fgr_mad"].append(ref_fgr(pf, tf, t, False))
            rows["fgr_mse"].append(ref_fgr(pf, tf, t, True))
        for m in rows:
            per_clip[m].append(rows[m])
    out = {}
    for m, clips in per_clip.items():  # per index over clips, then over indices
        length = max(map(len, clips))
        out[m] = sum(np.mean([c[i] for c in clips if i < len(c)]) for i in range(length)) / length
    return out


def test_evaluate_cli_matches_references(tiny_trees):
    root, frames, arrays = tiny_trees
    expected = _expected(frames, arrays)
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--pred",
            str(root / "pred"),
            "--true",
            str(root / "true"),
            "--json",
            "--csv",
            str(root / "clips.csv"),
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)
    assert set(reported) == set(metrics.LR_METRICS)
    for m in metrics.LR_METRICS:
        assert reported[m] == pytest.approx(expected[m], rel=1e-4), m
    lines = (root / "clips.csv").read_text().splitlines()
    assert lines[0].split(",") == ["subset", "clip", "frames", *metrics.LR_METRICS]
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["videomatte_motion", "0000", "3"],
        ["videomatte_static", "0000", "2"],
    ]


def test_dtssd_frame_zero_counts_as_zero(tiny_trees):
    root, _, arrays = tiny_trees
    result = evaluate(root / "pred", root / "true", progress=False)
    static = [c for c in result.clips if c.clip.subset == "videomatte_static"][0]
    assert static.per_frame["pha_dtssd"][0] == 0.0
    p1, p0 = arrays["pred", "videomatte_static", "0000", 1][0], arrays["pred", "videomatte_static", "0000", 0][0]
    t1, t0 = arrays["true", "videomatte_static", "0000", 1][0], arrays["true", "videomatte_static", "0000", 0][0]
    assert static.mean("pha_dtssd") == pytest.approx(ref_dtssd(p1, p0, t1, t0) / 2, rel=REL)


def test_evaluate_hr_keys(tiny_trees):
    root, _, _ = tiny_trees
    result = CliRunner().invoke(
        cli, ["evaluate", "--pred", str(root / "pred"), "--true", str(root / "true"), "--hr", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"pha_mad", "pha_mse", "pha_grad", "pha_dtssd", "fgr_mse"}


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda r: (r / "pred/videomatte_motion/0000/pha/0002.png").unlink(), "videomatte_motion/0000/pha/0002.png"),
        (
            lambda r: (r / "pred/videomatte_static/0000/fgr/0001.png").rename(
                r / "pred/videomatte_static/0000/fgr/0001.jpg"
            ),
            "0001.jpg",
        ),
        (lambda r: (r / "pred/videomatte_static").rename(r / "pred/videomatte_other"), "videomatte_static/0000"),
    ],
)
def test_mismatched_prediction_names_first_difference(tiny_trees, damage, named):
    root, _, _ = tiny_trees
    damage(root)
    result = CliRunner().invoke(cli, ["evaluate", "--pred", str(root / "pred"), "--true", str(root / "true")])
    assert result.exit_code == 2
    assert named in result.output and "Traceback" not in result.output
