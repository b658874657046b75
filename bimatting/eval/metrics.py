"""Per-frame matting metrics, defined exactly as RVM's official evaluators.

Source of every definition and scale: PeterL1n/RobustVideoMatting `evaluation/evaluate_lr.py`
(numpy + OpenCV, float32) and `evaluation/evaluate_hr.py` (same numbers, Grad without min-max
normalisation). Inputs are float32 arrays in [0, 1]: alpha [H, W], foreground [H, W, 3].

    metric      definition                                             scale
    pha_mad     mean |p - t|                                           x1e3
    pha_mse     mean (p - t)^2                                         x1e3
    pha_grad    sum (|grad t| - |grad p|)^2, Gaussian-derivative grad   /1e3
    pha_conn    sum |phi_t - phi_p| (connectivity, thresholds 0..1)    /1e3
    pha_dtssd   sqrt(sum ((p_k - p_k-1) - (t_k - t_k-1))^2 / N)        x1e2 (frame 0 scores 0)
    fgr_mad     mean |F_p - F_t| over RGB values of pixels with t > 0  x1e3
    fgr_mse     mean (F_p - F_t)^2 over the same values                x1e3

The Grad kernel and Conn's thresholds are the evaluators' (Rhemann et al.'s alphamatting.com
definitions as ported by RVM); Conn thresholds keep their float64 values from
np.arange(0, 1.1, 0.1) (e.g. 0.30000000000000004) for bit-exact parity.
"""

import math

import numpy as np

LR_METRICS = ("pha_mad", "pha_mse", "pha_grad", "pha_conn", "pha_dtssd", "fgr_mad", "fgr_mse")
# evaluate_hr.py has no Conn object and no fgrMAD.
HR_METRICS = ("pha_mad", "pha_mse", "pha_grad", "pha_dtssd", "fgr_mse")

GRAD_SIGMA = 1.4
GRAD_EPSILON = 0.01
CONN_THRESHOLDS = np.arange(0, 1.1, 0.1)  # float64: 0, 0.1, 0.2, 0.30000000000000004, ..., 1.0
CONN_MIN_DIFF = 0.15


def pha_mad(pred, true):
    return float(np.abs(pred - true).mean() * 1e3)


def pha_mse(pred, true):
    return float(((pred - true) ** 2).mean() * 1e3)


def _gaussian(x, sigma):
    return math.exp(-x * x / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))


def gradient_kernels(sigma=GRAD_SIGMA, epsilon=GRAD_EPSILON):
    """(h_x, h_y): Gaussian times derivative-of-Gaussian, L2-normalised; 9x9 for sigma 1.4.

    half = ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma epsilon))); h_x[i, j] = G(i - half) G'(j - half)
    with G'(x) = -x G(x) / sigma^2 (so h_x differentiates along columns, x); h_y = h_x^T.
    """
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.array([_gaussian(x, sigma) for x in offsets])
    dgauss = -offsets * gauss / sigma**2
    h_x = np.outer(gauss, dgauss)  # [size, size], row i ~ G, column j ~ G'
    h_x /= np.sqrt((h_x**2).sum())
    return h_x, h_x.T.copy()


_KERNELS = gradient_kernels()


def gradient_magnitude(image):
    """sqrt(g_x^2 + g_y^2), g from cv2.filter2D (correlation) with a replicated border."""
    import cv2

    g_x = cv2.filter2D(image, -1, _KERNELS[0], borderType=cv2.BORDER_REPLICATE)
    g_y = cv2.filter2D(image, -1, _KERNELS[1], borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(g_x**2 + g_y**2)


def pha_grad(pred, true, normalize=True):
    """Gradient error /1e3. normalize=True (LR evaluator): min-max normalise p and t first;
    the HR evaluator skips that step, so its values are not comparable with LR ones."""
    import cv2

    if normalize:
        pred = cv2.normalize(pred, np.zeros_like(pred), 1.0, 0.0, cv2.NORM_MINMAX)
        true = cv2.normalize(true, np.zeros_like(true), 1.0, 0.0, cv2.NORM_MINMAX)
    true_grad = gradient_magnitude(true).astype(np.float32)
    pred_grad = gradient_magnitude(pred).astype(np.float32)
    return float(((true_grad - pred_grad) ** 2).sum() / 1000)


def largest_component(mask):
    """Boolean mask of the largest 4-connected foreground component of `mask` (empty if none).

    Ties go to the component OpenCV labels first (raster order of its first pixel), as in the
    evaluator (np.argmax over the component sizes).
    """
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 1:  # label 0 is the background
        return np.zeros(mask.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def pha_conn(pred, true):
    """Connectivity error /1e3 (round-down map over thresholds 0.1..1.0, see module docstring)."""
    round_down = -np.ones_like(true)  # dtype of the input (float32), as the evaluator
    for i in range(1, len(CONN_THRESHOLDS)):
        omega = largest_component((true >= CONN_THRESHOLDS[i]) & (pred >= CONN_THRESHOLDS[i]))
        round_down[(round_down == -1) & ~omega] = CONN_THRESHOLDS[i - 1]
    round_down[round_down == -1] = 1
    true_diff = true - round_down
    pred_diff = pred - round_down
    true_phi = 1 - true_diff * (true_diff >= CONN_MIN_DIFF)
    pred_phi = 1 - pred_diff * (pred_diff >= CONN_MIN_DIFF)
    return float(np.abs(true_phi - pred_phi).sum() / 1000)


def pha_dtssd(pred, pred_prev, true, true_prev):
    """Temporal coherence x1e2 between frames k-1 and k; the caller scores frame 0 as 0."""
    error = ((pred - pred_prev) - (true - true_prev)) ** 2
    return float(np.sqrt(error.sum() / true.size) * 1e2)


def _masked(pred_fgr, true_fgr, true_pha):
    mask = true_pha > 0  # [H, W]; each masked pixel gives 3 values
    return pred_fgr[mask], true_fgr[mask]


def fgr_mad(pred_fgr, true_fgr, true_pha):
    """x1e3; NaN when the true alpha is 0 everywhere (no foreground to score)."""
    pred, true = _masked(pred_fgr, true_fgr, true_pha)
    return float(np.abs(pred - true).mean() * 1e3) if pred.size else math.nan


def fgr_mse(pred_fgr, true_fgr, true_pha):
    pred, true = _masked(pred_fgr, true_fgr, true_pha)
    return float(((pred - true) ** 2).mean() * 1e3) if pred.size else math.nan


def frame_metrics(pred_pha, true_pha, pred_fgr=None, true_fgr=None, *, prev=None, hr=False):
    """All metrics of one frame as a dict. prev = (pred_pha, true_pha) of the previous frame of
    the clip, or None for its first frame (dtSSD 0). Foreground metrics need both fgr arrays."""
    names = HR_METRICS if hr else LR_METRICS
    scores = {
        "pha_mad": pha_mad(pred_pha, true_pha),
        "pha_mse": pha_mse(pred_pha, true_pha),
        "pha_grad": pha_grad(pred_pha, true_pha, normalize=not hr),
    }
    if "pha_conn" in names:
        scores["pha_conn"] = pha_conn(pred_pha, true_pha)
    scores["pha_dtssd"] = 0.0 if prev is None else pha_dtssd(pred_pha, prev[0], true_pha, prev[1])
    if pred_fgr is not None and true_fgr is not None:
        if "fgr_mad" in names:
            scores["fgr_mad"] = fgr_mad(pred_fgr, true_fgr, true_pha)
        scores["fgr_mse"] = fgr_mse(pred_fgr, true_fgr, true_pha)
    return scores
