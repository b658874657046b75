"""Training of RVM and BiMatting (needs torch): RVM's four stages, losses, distillation.

losses      matting, coarse (BiMatting), segmentation and distillation losses
stages      the four stages as data (epochs, T, per-module learning rates, HR pass)
trainer     the loop: passes per step, Adam + AMP, DDP, checkpoints, bit-identical resume
sources     training data: RVM's datasets (bimatting.data), evaluation-layout composites,
            unlabelled footage for distillation
teacher     a frozen RVM whose outputs the student matches
"""
