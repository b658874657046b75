"""Training losses of RVM and BiMatting, written from their formulas.

Shapes: predictions and targets are [B, T, C, H, W] (C = 1 for alpha, 3 for foreground).
Every term is a mean over all elements unless said otherwise; the total is the plain sum.

Matting loss (RVM `train_loss.py`, Lin et al. 2021 "Robust High-Resolution Video Matting with
Temporal Guidance", Sec. 3.3; numbers from PeterL1n/RobustVideoMatting @ 53d74c6):

    L_pha = |p - t|_1                                              alpha L1
          + Lap(p, t)                                              Laplacian pyramid (5 levels)
          + 5 * MSE(p[:, 1:] - p[:, :-1], t[:, 1:] - t[:, :-1])    temporal coherence
    L_fgr = |F_p*m - F_t*m|_1 + 5 * MSE(d_t(F_p*m), d_t(F_t*m))   m = [t > 0], mean over ALL pixels
    Lap(p, t) = 1/L * sum_{l=0}^{L-1} 2^l * |lap_l(p) - lap_l(t)|_1

where lap_l is level l of a Laplacian pyramid built with the 5x5 Gaussian
k = [1,4,6,4,1]^T [1,4,6,4,1] / 256 (reflect padding by 2): with G_0 = x (cropped to even size),
    down(G) = (k * G)[::2, ::2],   up(D) = k * Z(D), Z(D) = zeros(2h, 2w) with Z[::2, ::2] = 4 D,
    lap_l = G_l - up(down(G_l)),   G_{l+1} = down(G_l)   (each G_l cropped to even size first).

Segmentation loss: BCE-with-logits of the seg head against the binary person mask.

BiMatting (Qin et al. NeurIPS 2023, htqin/BiMatting @ 746876b `train.py`) adds
    0.25 * matting loss on the 1/16 coarse outputs (fgr_s, pha_s), targets bilinearly resized to
    the coarse size (align_corners=False, no antialias), Laplacian with 1 level.

Distillation (this project; the official code has a flag but never uses it) reuses the same
matting loss with a teacher's fgr/pha as the target (see `distillation_loss`).
"""

import torch
from torch.nn import functional as F

LAPLACIAN_LEVELS = 5
TEMPORAL_WEIGHT = 5.0  # RVM: the coherence terms are multiplied by 5
COARSE_WEIGHT = 0.25  # BiMatting: weight of the matting loss on the 1/16 outputs
COARSE_LAPLACIAN_LEVELS = 1


def gaussian_kernel(device=None, dtype=torch.float32):
    """The 5x5 binomial kernel [1,4,6,4,1]^T [1,4,6,4,1] / 256 as a conv weight [1, 1, 5, 5]."""
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype)
    return (row[:, None] * row[None, :] / 256.0)[None, None]


def _blur(x, kernel):
    # [N, C, H, W] -> [N, C, H, W]: same blur on every channel, reflect padding by 2
    n, c, h, w = x.shape
    flat = F.pad(x.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(flat, kernel).reshape(n, c, h, w)


def _downsample(x, kernel):
    # [N, C, H, W] -> [N, C, H/2, W/2]
    return _blur(x, kernel)[:, :, ::2, ::2]


def _upsample(x, kernel):
    # [N, C, h, w] -> [N, C, 2h, 2w]: insert zeros, times 4 (keeps the mean), blur
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x * 4
    return _blur(up, kernel)


def laplacian_pyramid(x, levels):
    """Band-pass levels [lap_0, ..., lap_{levels-1}] of x [N, C, H, W] (no low-pass residual)."""
    kernel = gaussian_kernel(x.device, x.dtype)
    pyramid, current = [], x
    for _ in range(levels):
        h, w = current.shape[-2:]
        current = current[:, :, : h - h % 2, : w - w % 2]  # crop to even size
        down = _downsample(current, kernel)
        pyramid.append(current - _upsample(down, kernel))
        current = down
    return pyramid


def laplacian_loss(pred, true, levels=LAPLACIAN_LEVELS):
    """1/L * sum_l 2^l * L1(lap_l(pred), lap_l(true)); pred/true [N, C, H, W]."""
    pred_levels = laplacian_pyramid(pred, levels)
    true_levels = laplacian_pyramid(true, levels)
    total = sum((2**level) * F.l1_loss(p, t) for level, (p, t) in enumerate(zip(pred_levels, true_levels)))
    return total / levels


def temporal_loss(pred, true):
    """TEMPORAL_WEIGHT * MSE of frame differences along T; pred/true [B, T, C, H, W]. 0 if T = 1."""
    if pred.shape[1] < 2:
        return pred.new_zeros(())
    return TEMPORAL_WEIGHT * F.mse_loss(pred[:, 1:] - pred[:, :-1], true[:, 1:] - true[:, :-1])


TERM_NAMES = ("pha_l1", "pha_laplacian", "pha_coherence", "fgr_l1", "fgr_coherence")


def matting_terms(pred_fgr, pred_pha, true_fgr, true_pha, terms=TERM_NAMES, levels=LAPLACIAN_LEVELS):
    """The named terms of RVM's matting loss, only those computed, in the order asked:
        pha_l1         L1 of alpha
        pha_laplacian  Laplacian pyramid loss of alpha (`levels` levels)
        pha_coherence  TEMPORAL_WEIGHT x MSE of alpha's frame differences
        fgr_l1, fgr_coherence  the same two on fgr * [true_pha > 0]: the mask zeroes pixels
                       outside the foreground but the means run over all pixels (RVM)
    pha [B, T, 1, H, W], fgr [B, T, 3, H, W]; the fgr (pha) tensors may be None when no fgr (pha)
    term is asked for."""
    unknown = set(terms) - set(TERM_NAMES)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {TERM_NAMES}")
    found = {}
    if "pha_l1" in terms:
        found["pha_l1"] = F.l1_loss(pred_pha, true_pha)
    if "pha_laplacian" in terms:
        found["pha_laplacian"] = laplacian_loss(pred_pha.flatten(0, 1), true_pha.flatten(0, 1), levels)
    if "pha_coherence" in terms:
        found["pha_coherence"] = temporal_loss(pred_pha, true_pha)
    if "fgr_l1" in terms or "fgr_coherence" in terms:
        mask = (true_pha > 0).to(pred_fgr.dtype)
        pred_masked, true_masked = pred_fgr * mask, true_fgr * mask
        if "fgr_l1" in terms:
            found["fgr_l1"] = F.l1_loss(pred_masked, true_masked)
        if "fgr_coherence" in terms:
            found["fgr_coherence"] = temporal_loss(pred_masked, true_masked)
    return {name: found[name] for name in terms}


def alpha_losses(pred_pha, true_pha, levels=LAPLACIAN_LEVELS):
    """{'pha_l1', 'pha_laplacian', 'pha_coherence'} for [B, T, 1, H, W] alphas."""
    return matting_terms(None, pred_pha, None, true_pha, TERM_NAMES[:3], levels)


def foreground_losses(pred_fgr, true_fgr, true_pha):
    """{'fgr_l1', 'fgr_coherence'}: L1 and temporal MSE of fgr * [true_pha > 0].

    The mask zeroes pixels outside the foreground but the means run over all pixels (RVM).
    pred_fgr/true_fgr [B, T, 3, H, W], true_pha [B, T, 1, H, W].
    """
    return matting_terms(pred_fgr, None, true_fgr, true_pha, TERM_NAMES[3:])


def matting_loss(pred_fgr, pred_pha, true_fgr, true_pha, levels=LAPLACIAN_LEVELS):
    """RVM's matting loss: dict of the five terms plus 'total' (their sum, each weight 1)."""
    terms = matting_terms(pred_fgr, pred_pha, true_fgr, true_pha, TERM_NAMES, levels)
    terms["total"] = sum(terms.values())
    return terms


def resize_to(x, size):
    """Bilinear resize of [B, T, C, H, W] to spatial `size` (align_corners=False, no antialias)."""
    b, t = x.shape[:2]
    flat = F.interpolate(x.flatten(0, 1), size=tuple(size), mode="bilinear", align_corners=False)
    return flat.reshape(b, t, *flat.shape[1:])


def coarse_matting_loss(pred_fgr_s, pred_pha_s, true_fgr, true_pha, terms=TERM_NAMES):
    """BiMatting's extra term: COARSE_WEIGHT x the named matting terms at the coarse (1/16) size,
    1 Laplacian level; the full-size targets are bilinearly downsampled to the size of pred_pha_s.
    Returns {'coarse_<term>': weighted value} and 'coarse_total' (their sum)."""
    size = pred_pha_s.shape[-2:]
    found = matting_terms(
        pred_fgr_s, pred_pha_s, resize_to(true_fgr, size), resize_to(true_pha, size), terms, COARSE_LAPLACIAN_LEVELS
    )
    weighted = {f"coarse_{name}": COARSE_WEIGHT * value for name, value in found.items()}
    return {**weighted, "coarse_total": sum(weighted.values())}


def student_matting_loss(pred, true_fgr, true_pha, terms=TERM_NAMES):
    """The one composition of the matting loss a student trains on: the named terms at full size
    plus, when `pred` has BiMatting's coarse outputs, COARSE_WEIGHT x the same terms at 1/16.
    With every term: RVM's matting loss + BiMatting's coarse term; the distillation's recipe starts
    from the L1 terms alone.

    pred: {'fgr', 'pha'} (+ 'fgr_s', 'pha_s'); returns {term, 'coarse_<term>', 'coarse_total', 'total'}."""
    found = matting_terms(pred["fgr"], pred["pha"], true_fgr, true_pha, terms)
    parts = list(found.values())
    if "pha_s" in pred:
        coarse = coarse_matting_loss(pred["fgr_s"], pred["pha_s"], true_fgr, true_pha, terms)
        found.update(coarse)
        parts += [value for name, value in coarse.items() if name != "coarse_total"]
    found["total"] = sum(parts)  # summed term by term, in order: one rounding for every caller
    return found


def segmentation_loss(pred_seg_logits, true_seg):
    """BCE-with-logits, mean over all pixels; both [B, T, 1, H, W] (true_seg in {0, 1})."""
    return F.binary_cross_entropy_with_logits(pred_seg_logits, true_seg)


def distillation_loss(student, teacher, weight=1.0):
    """student_matting_loss of the student against a teacher's outputs, times `weight` (keys 'distill_*').

    student: dict with 'fgr', 'pha' (and 'fgr_s', 'pha_s' for BiMatting); teacher: 'fgr', 'pha'
    (detached). The teacher's alpha plays the true alpha everywhere, including the fgr mask
    [teacher_pha > 0]; its outputs resized to 1/16 are the coarse targets.
    """
    terms = student_matting_loss(student, teacher["fgr"], teacher["pha"])
    return {f"distill_{name}": weight * value for name, value in terms.items()}
