"""RVM's four training stages as data (MODEL.md section 3; RVM and BiMatting `train.sh`).

Each stage is one `StageConfig`. The trainer reads these fields and has no per-stage branches:

    data          'videomatte' (clips) or 'imagematte' (still images repeated T times)
    epochs        (first, last) epoch numbers, inclusive, as in the official scripts
    seq_lr        T of the low-resolution pass (s = 1)
    seq_hr        T of the high-resolution pass (s = hr_downsample_ratio); 0 = no HR pass
    lr            per-module Adam learning rates {backbone, aspp, decoder, refiner}; the heads
                  (project_mat, project_seg) use the decoder rate (RVM fix 48effc9)
    size_lr       side of the square crop of the LR pass before the random crop (512)
    size_hr       same for the HR pass (2048)
    seg_cycle     which segmentation source each step's segmentation pass draws from

Numbers: PeterL1n/RobustVideoMatting @ 53d74c6 `train.py` docstring and htqin/BiMatting @ 746876b
`scripts/train.sh`. BiMatting differs from RVM in T (stage 2: 20 vs 50, stage 4: 20 vs 40), in
stage 3's data (VideoMatte SD, not HD) and in stage 4's decoder lr (5e-5 vs 1e-5).
"""

import dataclasses

from bimatting.errors import InputError

MODULE_GROUPS = ("backbone", "aspp", "decoder", "refiner")
HEADS = ("project_mat", "project_seg")  # trained at the decoder's rate


@dataclasses.dataclass(frozen=True)
class StageConfig:
    stage: int
    data: str
    videomatte_variant: str  # 'SD' or 'HD' VideoMatte240K (unused for imagematte)
    epochs: tuple
    seq_lr: int
    seq_hr: int
    lr: dict
    size_lr: int = 512
    size_hr: int = 2048
    hr_downsample_ratio: float = 0.25
    crop_multiple: int = 1  # BiMatting floors random crop sides to a multiple of 16
    # Segmentation pass of step k uses seg_cycle[k % len]: 'video' = YouTubeVIS clips at T = seq_lr,
    # 'image' = COCO + SPD stills as a batch of B * seq_lr frames with T = 1 (all stages, RVM).
    seg_cycle: tuple = ("video", "image")

    @property
    def epoch_count(self):
        return self.epochs[1] - self.epochs[0] + 1


def _lr(backbone, aspp, decoder, refiner):
    return {"backbone": backbone, "aspp": aspp, "decoder": decoder, "refiner": refiner}


STAGES = {
    "rvm": {
        1: StageConfig(1, "videomatte", "SD", (0, 19), 15, 0, _lr(1e-4, 2e-4, 2e-4, 0.0)),
        2: StageConfig(2, "videomatte", "SD", (20, 21), 50, 0, _lr(5e-5, 1e-4, 1e-4, 0.0)),
        3: StageConfig(3, "videomatte", "HD", (22, 22), 40, 6, _lr(1e-5, 1e-5, 1e-5, 2e-4)),
        4: StageConfig(4, "imagematte", "HD", (23, 27), 40, 6, _lr(1e-5, 1e-5, 1e-5, 2e-4)),
    },
    "bimatting": {
        1: StageConfig(1, "videomatte", "SD", (0, 19), 15, 0, _lr(1e-4, 2e-4, 2e-4, 0.0), crop_multiple=16),
        2: StageConfig(2, "videomatte", "SD", (20, 21), 20, 0, _lr(5e-5, 1e-4, 1e-4, 0.0), crop_multiple=16),
        3: StageConfig(3, "videomatte", "SD", (22, 22), 40, 6, _lr(1e-5, 1e-5, 1e-5, 2e-4), crop_multiple=16),
        4: StageConfig(4, "imagematte", "SD", (23, 27), 20, 6, _lr(1e-5, 1e-5, 5e-5, 2e-4), crop_multiple=16),
    },
}


def stage_config(arch, stage, **overrides):
    """The StageConfig of `arch` (rvm | bimatting) and `stage` (1..4), with fields overridden.

    Overrides with value None are ignored, so CLI options can be passed through as they are.
    """
    if arch not in STAGES:
        raise InputError(f"unknown architecture '{arch}' for training; expected one of: {', '.join(STAGES)}")
    if stage not in STAGES[arch]:
        raise InputError(f"unknown stage {stage}; expected one of 1, 2, 3, 4")
    config = STAGES[arch][stage]
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(overrides) - {field.name for field in dataclasses.fields(StageConfig)}
    if unknown:
        raise InputError(f"unknown stage setting(s) {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **overrides)


def module_group(parameter_name):
    """Which lr group a parameter belongs to, from its top-level module name (heads -> decoder)."""
    top = parameter_name.split(".", 1)[0]
    if top in MODULE_GROUPS:
        return top
    if top in HEADS:
        return "decoder"
    raise ValueError(
        f"parameter '{parameter_name}' is in no lr group; expected a top-level module in {MODULE_GROUPS + HEADS}"
    )


def parameter_groups(model, lr):
    """Adam parameter groups, one per module group, in MODULE_GROUPS order: [{'params', 'lr', 'name'}]."""
    grouped = {name: [] for name in MODULE_GROUPS}
    for name, parameter in model.named_parameters():
        grouped[module_group(name)].append(parameter)
    return [{"params": grouped[name], "lr": lr[name], "name": name} for name in MODULE_GROUPS if grouped[name]]
