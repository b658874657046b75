"""Each loss term against a direct numpy computation written from the formulas (MODEL.md 3).

The references below share no code with bimatting.train.losses: explicit 25-tap correlation with
numpy's reflect padding, explicit zero insertion, explicit bilinear sampling positions. Tolerance
1e-5 relative: float32 torch vs float64 numpy over a few thousand elements.
"""

import numpy as np
import pytest
import torch

from bimatting.train import losses
from bimatting.train.recipe import Recipe, loss_terms_at

RTOL, ATOL = 1e-5, 1e-6
KERNEL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def blur_np(img):
    """[H, W] float64: 5x5 binomial correlation with reflect padding by 2 (no edge repeat)."""
    padded = np.pad(img, 2, mode="reflect")
    h, w = img.shape
    out = np.zeros_like(img)
    for i in range(5):
        for j in range(5):
            out += KERNEL[i, j] * padded[i : i + h, j : j + w]
    return out


def laplacian_np(pred, true, levels):
    """sum_l 2^l mean|lap_l(pred) - lap_l(true)| / levels, for [N, H, W] stacks."""

    def pyramid(img):
        out, cur = [], img
        for _ in range(levels):
            cur = cur[: cur.shape[0] // 2 * 2, : cur.shape[1] // 2 * 2]
            down = blur_np(cur)[::2, ::2]
            zeros = np.zeros_like(cur)
            zeros[::2, ::2] = 4 * down
            out.append(cur - blur_np(zeros))
            cur = down
        return out

    per_level = np.zeros(levels)
    for p, t in zip(pred, true):
        for level, (a, b) in enumerate(zip(pyramid(p), pyramid(t))):
            per_level[level] += np.abs(a - b).mean() / len(pred)
    return sum(2**level * value for level, value in enumerate(per_level)) / levels


def temporal_np(pred, true):
    return 5 * np.mean(((pred[:, 1:] - pred[:, :-1]) - (true[:, 1:] - true[:, :-1])) ** 2)


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    b, t, h, w = 2, 3, 64, 80
    true_pha = (torch.rand(b, t, 1, h, w, generator=g) - 0.3).clamp(0, 1)  # ~30% exact zeros
    return {
        "pred_pha": torch.rand(b, t, 1, h, w, generator=g),
        "true_pha": true_pha,
        "pred_fgr": torch.rand(b, t, 3, h, w, generator=g),
        "true_fgr": torch.rand(b, t, 3, h, w, generator=g),
    }


def close(value, expected):
    np.testing.assert_allclose(float(value), expected, rtol=RTOL, atol=ATOL)


def test_gaussian_kernel_is_binomial_outer_product():
    kernel = losses.gaussian_kernel()[0, 0].numpy()
    np.testing.assert_array_equal(kernel, KERNEL.astype(np.float32))
    assert kernel.sum() == 1.0


def test_alpha_l1_laplacian_and_temporal(tensors):
    p, t = tensors["pred_pha"], tensors["true_pha"]
    terms = losses.alpha_losses(p, t)
    pn, tn = p.double().numpy(), t.double().numpy()
    close(terms["pha_l1"], np.abs(pn - tn).mean())
    close(terms["pha_laplacian"], laplacian_np(pn[:, :, 0].reshape(-1, 64, 80), tn[:, :, 0].reshape(-1, 64, 80), 5))
    close(terms["pha_coherence"], temporal_np(pn, tn))


def test_laplacian_odd_sizes_crop_to_even():
    g = torch.Generator().manual_seed(1)
    p, t = torch.rand(2, 1, 67, 71, generator=g), torch.rand(2, 1, 67, 71, generator=g)
    close(losses.laplacian_loss(p, t), laplacian_np(p[:, 0].double().numpy(), t[:, 0].double().numpy(), 5))


def test_laplacian_of_identical_inputs_is_zero_and_levels_are_weighted(tensors):
    p = tensors["pred_pha"].flatten(0, 1)
    assert float(losses.laplacian_loss(p, p)) == 0.0
    # a constant offset lives only in the low-pass residual, which the pyramid leaves out
    assert float(losses.laplacian_loss(p, p + 0.25)) < 1e-6


def test_foreground_masked_by_true_alpha_over_all_pixels(tensors):
    terms = losses.foreground_losses(tensors["pred_fgr"], tensors["true_fgr"], tensors["true_pha"])
    mask = (tensors["true_pha"].double().numpy() > 0).astype(np.float64)
    pf, tf = tensors["pred_fgr"].double().numpy() * mask, tensors["true_fgr"].double().numpy() * mask
    close(terms["fgr_l1"], np.abs(pf - tf).mean())  # mean over ALL pixels, masked ones count 0
    close(terms["fgr_coherence"], temporal_np(pf, tf))
    assert 0.2 < 1 - mask.mean() < 0.4  # the mask really removes pixels


def test_matting_total_is_plain_sum(tensors):
    terms = losses.matting_loss(tensors["pred_fgr"], tensors["pred_pha"], tensors["true_fgr"], tensors["true_pha"])
    parts = ["pha_l1", "pha_laplacian", "pha_coherence", "fgr_l1", "fgr_coherence"]
    close(terms["total"], sum(float(terms[k]) for k in parts))


def test_single_frame_has_no_temporal_term(tensors):
    terms = losses.matting_loss(
        tensors["pred_fgr"][:, :1], tensors["pred_pha"][:, :1], tensors["true_fgr"][:, :1], tensors["true_pha"][:, :1]
    )
    assert float(terms["pha_coherence"]) == 0.0 and float(terms["fgr_coherence"]) == 0.0


def test_coarse_term_quarter_weight_one_level_bilinear_targets(tensors):
    g = torch.Generator().manual_seed(2)
    b, t = 2, 3
    pred_pha_s = torch.rand(b, t, 1, 4, 5, generator=g)
    pred_fgr_s = torch.rand(b, t, 3, 4, 5, generator=g)
    terms = losses.coarse_matting_loss(pred_fgr_s, pred_pha_s, tensors["true_fgr"], tensors["true_pha"])

    # Bilinear 1/16 without antialias, align_corners=False: output pixel i samples source
    # coordinate 16 i + 7.5, i.e. the mean of the 2x2 pixels (16i+7, 16i+8) in each direction.
    def down(x):
        x = x.double().numpy()
        rows = (x[..., 7::16, :] + x[..., 8::16, :]) / 2
        return (rows[..., 7::16] + rows[..., 8::16]) / 2

    tp, tf = down(tensors["true_pha"]), down(tensors["true_fgr"])
    pp, pf = pred_pha_s.double().numpy(), pred_fgr_s.double().numpy()
    mask = (tp > 0).astype(np.float64)
    expected = (
        np.abs(pp - tp).mean()
        + laplacian_np(pp[:, :, 0].reshape(-1, 4, 5), tp[:, :, 0].reshape(-1, 4, 5), 1)
        + temporal_np(pp, tp)
        + np.abs(pf * mask - tf * mask).mean()
        + temporal_np(pf * mask, tf * mask)
    )
    close(terms["coarse_total"], 0.25 * expected)


def test_segmentation_bce_with_logits():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 1, 16, 16, generator=g) * 4
    target = (torch.rand(2, 3, 1, 16, 16, generator=g) > 0.5).float()
    x, y = logits.double().numpy(), target.double().numpy()
    expected = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
    close(losses.segmentation_loss(logits, target), expected)


def test_distillation_matches_teacher_as_ground_truth(tensors):
    student = {"fgr": tensors["pred_fgr"], "pha": tensors["pred_pha"]}
    teacher = {"fgr": tensors["true_fgr"], "pha": tensors["true_pha"]}
    distilled = losses.distillation_loss(student, teacher, weight=0.5)
    direct = losses.matting_loss(student["fgr"], student["pha"], teacher["fgr"], teacher["pha"])
    close(distilled["distill_total"], 0.5 * float(direct["total"]))
    assert float(losses.distillation_loss(teacher, teacher)["distill_total"]) == 0.0


def test_chosen_terms_l1_only_and_all_terms(tensors):
    """The distillation's loss: the L1 terms alone are numpy's L1s (full size + 0.25 x coarse); every
    term gives RVM's loss plus BiMatting's coarse term, as matting_loss + coarse_matting_loss."""
    g = torch.Generator().manual_seed(3)
    pred = {
        "fgr": tensors["pred_fgr"],
        "pha": tensors["pred_pha"],
        "fgr_s": torch.rand(2, 3, 3, 4, 5, generator=g),
        "pha_s": torch.rand(2, 3, 1, 4, 5, generator=g),
    }
    true_fgr, true_pha = tensors["true_fgr"], tensors["true_pha"]
    l1 = losses.student_matting_loss(pred, true_fgr, true_pha, ("pha_l1", "fgr_l1"))
    assert set(l1) == {"pha_l1", "fgr_l1", "coarse_pha_l1", "coarse_fgr_l1", "coarse_total", "total"}
    tp, tf = true_pha.double().numpy(), true_fgr.double().numpy()
    mask = (tp > 0).astype(np.float64)
    close(l1["pha_l1"], np.abs(pred["pha"].double().numpy() - tp).mean())
    close(l1["fgr_l1"], np.abs((pred["fgr"].double().numpy() - tf) * mask).mean())
    close(l1["total"], sum(float(l1[k]) for k in ("pha_l1", "fgr_l1", "coarse_pha_l1", "coarse_fgr_l1")))
    everything = losses.student_matting_loss(pred, true_fgr, true_pha)
    full = losses.matting_loss(pred["fgr"], pred["pha"], true_fgr, true_pha)["total"]
    coarse = losses.coarse_matting_loss(pred["fgr_s"], pred["pha_s"], true_fgr, true_pha)["coarse_total"]
    close(everything["total"], float(full + coarse))
    with pytest.raises(ValueError, match="pha_l2"):
        losses.student_matting_loss(pred, true_fgr, true_pha, ("pha_l2",))


def test_recipe_phases_in_laplacian_and_coherence():
    assert loss_terms_at(Recipe(), 10**6) == ("pha_l1", "fgr_l1")
    phased = Recipe(laplacian_from=100, coherence_from=200)
    assert loss_terms_at(phased, 99) == ("pha_l1", "fgr_l1")
    assert loss_terms_at(phased, 100) == ("pha_l1", "fgr_l1", "pha_laplacian")
    assert set(loss_terms_at(phased, 200)) == set(losses.TERM_NAMES)
