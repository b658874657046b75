"""One optimisation pass of a training step: random crop, composite, forward, loss.

RVM's trainer makes one Adam step per pass (LR matting, HR matting, segmentation); this project
adds an unlabelled-footage pass for distillation. A pass gets a batch dict of tensors
[B, T, C, S, S] on the device and returns the loss terms {name: scalar tensor} with 'total'.

Random crop (RVM `train.py` random_crop): w, h drawn from [S/2, S) (BiMatting floors both to a
multiple of 16), every tensor resized to a max(h, w) square (bilinear) and centre-cropped to h x w.
The composite src = fgr * pha + bgr * (1 - pha) is made after the crop when a batch carries bgr;
evaluation-layout batches carry src already.

Distillation weights (this project's choice; RVM/BiMatting train without a teacher): with a
teacher, labelled passes add 0.5 x the matting loss against the teacher's fgr/pha (ground truth
stays the main signal; the teacher adds its soft, temporally consistent boundaries), and
unlabelled passes use 1.0 x the same loss, since the teacher is their only signal. Both include
the 0.25 x coarse term for BiMatting. The CLI exposes them as --distill-weight/--unlabelled-weight.
"""

from torch.nn import functional as F

from bimatting.train import losses


def crop_size(rng, size, multiple=1):
    """(h, w) of RVM's random crop of a size x size input, floored to `multiple` (>= multiple)."""
    w, h = rng.randrange(size // 2, size), rng.randrange(size // 2, size)
    if multiple > 1:
        w, h = max(multiple, w - w % multiple), max(multiple, h - h % multiple)
    return h, w


def random_crop(batch, h, w):
    """Resize every [B,T,C,S,S] tensor of `batch` to a max(h,w) square and centre-crop to h x w."""
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = {}
    for key, value in batch.items():
        b, t = value.shape[:2]
        resized = F.interpolate(value.flatten(0, 1), size=(side, side), mode="bilinear", align_corners=False)
        out[key] = resized[:, :, top : top + h, left : left + w].unflatten(0, (b, t))
    return out


def composite(batch):
    """Add src = fgr * pha + bgr * (1 - pha) when the batch has no src."""
    if "src" not in batch:
        batch = dict(batch, src=batch["fgr"] * batch["pha"] + batch["bgr"] * (1 - batch["pha"]))
    return batch


def student_outputs(model, src, downsample_ratio):
    """{'fgr', 'pha'} (+ 'fgr_s', 'pha_s' for BiMatting) of a matting forward from zero state."""
    outputs = model(src, downsample_ratio=downsample_ratio)
    named = {"fgr": outputs[0], "pha": outputs[1]}
    if len(outputs) == 8:  # BiMatting: fgr, pha, fgr_s, pha_s, r1..r4
        named.update(fgr_s=outputs[2], pha_s=outputs[3])
    return {key: value.float() for key, value in named.items()}


def matting_pass(model, batch, downsample_ratio, teacher=None, distill_weight=0.0):
    """Ground-truth matting loss (+ BiMatting's coarse term, + the teacher's terms if given)."""
    pred = student_outputs(model, batch["src"], downsample_ratio)
    terms = losses.student_matting_loss(pred, batch["fgr"], batch["pha"])
    if teacher is not None and distill_weight > 0:
        distilled = losses.distillation_loss(pred, teacher(batch["src"], downsample_ratio), distill_weight)
        terms["distill_total"] = distilled["distill_total"]
        terms["total"] = terms["total"] + distilled["distill_total"]
    return terms


def unlabelled_pass(model, batch, downsample_ratio, teacher, distill_weight=1.0):
    """Teacher terms only (no true alpha): the matting loss against the teacher's fgr/pha."""
    pred = student_outputs(model, batch["src"], downsample_ratio)
    distilled = losses.distillation_loss(pred, teacher(batch["src"], downsample_ratio), distill_weight)
    return {"distill_total": distilled["distill_total"], "total": distilled["distill_total"]}


def segmentation_pass(model, batch):
    """BCE-with-logits of the segmentation head; batch {'img', 'seg'} [B, T, C, H, W]."""
    logits = model(batch["img"], segmentation_pass=True)[0]
    loss = losses.segmentation_loss(logits.float(), batch["seg"])
    return {"seg_bce": loss, "total": loss}
