"""Agreement of a matting network with a teacher on unlabelled footage (no true alpha needed).

Both networks run over the same frames with their recurrent states carried, at the same size and
downsample ratio. Per frame:
    pha_mad   mean |pha_s - pha_t| over all pixels
    fgr_mad   mean |fgr_s - fgr_t| over pixels where the teacher's pha > 0 (RVM's fgr metrics
              count only the foreground; elsewhere fgr is undefined)
    iou       |{pha_s > 0.5} and {pha_t > 0.5}| / |union| (1 where both are empty)
    zero_pha_mad  what an all-zero matte would score (mean of the teacher's pha): the floor to beat
Clip figures: mean of the per-frame MADs; IoU from the counts summed over the clip.
"""

import dataclasses

import numpy as np
import torch

from bimatting.recurrent import recurrent_step


@dataclasses.dataclass
class ClipAgreement:
    name: str
    pha_mad: list
    fgr_mad: list
    intersection: int = 0
    union: int = 0
    zero_pha_mad: list = dataclasses.field(default_factory=list)  # what an all-zero matte scores

    @property
    def iou(self):
        return 1.0 if self.union == 0 else self.intersection / self.union

    def summary(self):
        return {
            "clip": self.name,
            "frames": len(self.pha_mad),
            "pha_mad": float(np.mean(self.pha_mad)),
            "fgr_mad": float(np.mean(self.fgr_mad)),
            "iou": self.iou,
            "pha_mad_max_frame": float(np.max(self.pha_mad)),
            "zero_pha_mad": float(np.mean(self.zero_pha_mad)),
        }


@torch.no_grad()
def run_recurrent(model, frames, downsample_ratio=1.0, chunk=8):
    """Outputs over uint8 frames [N, 3, h, w], `chunk` frames per call, states carried:
    (fgr float32 [N, 3, h, w], pha float32 [N, 1, h, w])."""
    fgr, pha, states = [], [], None
    for start in range(0, frames.shape[0], chunk):
        src = frames[start : start + chunk].float().div(255)[None]  # [1, T, 3, h, w]
        outputs, states = recurrent_step(model, src, states, downsample_ratio)
        fgr.append(outputs[0][0].float())
        pha.append(outputs[1][0].float())
    return torch.cat(fgr), torch.cat(pha)


def compare(name, student, teacher):
    """student/teacher: (fgr [N,3,h,w], pha [N,1,h,w]) -> ClipAgreement."""
    (fgr_s, pha_s), (fgr_t, pha_t) = student, teacher
    result = ClipAgreement(name, [], [])
    for k in range(pha_s.shape[0]):
        result.pha_mad.append(float((pha_s[k] - pha_t[k]).abs().mean()))
        result.zero_pha_mad.append(float(pha_t[k].abs().mean()))
        mask = (pha_t[k] > 0).expand_as(fgr_t[k])
        result.fgr_mad.append(float((fgr_s[k] - fgr_t[k]).abs()[mask].mean()) if mask.any() else 0.0)
        hard_s, hard_t = pha_s[k] > 0.5, pha_t[k] > 0.5
        result.intersection += int((hard_s & hard_t).sum())
        result.union += int((hard_s | hard_t).sum())
    return result


def agreement(model, teacher_outputs, clips, downsample_ratio=1.0):
    """[(name, frames uint8 [N,3,h,w])] and the teacher's outputs for each -> [ClipAgreement].
    `model` is switched to eval mode for the run and back."""
    was_training = model.training
    model.eval()
    try:
        return [
            compare(name, run_recurrent(model, frames, downsample_ratio), teacher)
            for (name, frames), teacher in zip(clips, teacher_outputs)
        ]
    finally:
        model.train(was_training)


def totals(results):
    """Worst-clip and mean figures over clips."""
    summaries = [r.summary() for r in results]
    return {
        "clips": summaries,
        "pha_mad_mean": float(np.mean([s["pha_mad"] for s in summaries])),
        "pha_mad_worst": float(np.max([s["pha_mad"] for s in summaries])),
        "iou_mean": float(np.mean([s["iou"] for s in summaries])),
        "iou_worst": float(np.min([s["iou"] for s in summaries])),
        "fgr_mad_mean": float(np.mean([s["fgr_mad"] for s in summaries])),
        "zero_pha_mad_mean": float(np.mean([s["zero_pha_mad"] for s in summaries])),
    }
