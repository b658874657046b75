"""The binary-network training recipe: each piece a switch, all of them recorded in checkpoints.

Why these pieces (measured on this project's BiMatting, fitting 4 frames to the RVM teacher,
150 Adam steps; an all-zero matte scores 60.8e-3 pha MAD): one Adam rate for everything and
thresholds at 0 gave 72.2e-3 (worse than empty); latent binary weights at 10x the float rate
32.1e-3; that plus data-initialised thresholds 16.9e-3. Full precision reached 12.7e-3.

    latent_lr, float_lr      per-group Adam rates: the latent weights of binary convs apart from
                             everything else (a latent weight only matters through its sign, so it
                             needs larger steps to flip; AdamBNN, Liu et al. ICML 2021)
    latent_init              latent weights start as U(0, 1) * latent_init (ReActNet's
                             HardBinaryConv: rand * 1e-3), inside the STE window |w~| <= 1; 0 keeps
                             PyTorch's default conv initialisation
    threshold_init           every learnable threshold before a sign starts at minus the
                             per-channel median of its input on the first batch, so each sign
                             starts balanced and inside the STE window (thresholds at 0 left the
                             ASPP gate dead and sign(image in [0, 1]) constant)
    binary_weights_from      ReActNet's two steps (Liu et al., ECCV 2020): binary activations
                             with real-valued weights until this step, binary weights from then
                             on (0: binary from the start); weight decay only in step 1
    feature_weight,          distillation of intermediate features from the teacher
    attention_weight         (bimatting.train.features): decoder features matched directly (same
                             widths as RVM), encoder taps through attention maps (Real-to-Binary,
                             Martinez et al., ICLR 2020)
    adapter_weight           the encoder's features at 1/4, 1/8, 1/16 matched to the teacher's
                             through training-only 1x1 adapters (features.EncoderAdapters)
    ste_window               "fixed": every sign passes gradient where |x| <= 1 (ReActNet);
                             "spread": where |x| <= max(1, std_c(x)), scaled by 1 / that
                             (binarize.spread_binary_activation), for sites whose inputs outgrow 1
    heads_from_teacher       float layers whose shapes equal the teacher's start from its weights

Defaults are what paid in bench/recipe_fit.py (4 real frames fitted to RVM, 150 steps, pha MAD
x1e3, all-zero matte 101.2): one rate 33.9; latent weights apart 32.0; + thresholds from data
23.6; + teacher heads 27.6; + decoder features x1 35.2 (x0.1 33.2); + encoder attention 30.5;
two-step to step 50 27.2; latent init rand * 1e-3 89.8. Feature matching and teacher heads are
therefore off by default; on the default run, features x1 left held-out agreement at the
all-zero level after 500 steps.
    laplacian_from,          the loss: the L1 terms of RVM's matting loss (pha and masked fgr, full
    coherence_from           size and BiMatting's 1/16 coarse outputs) from step 0; RVM's Laplacian
                             and temporal-coherence terms join at these steps (-1: never). With
                             every term from step 0 the loss fell while the held-out matte stayed
                             empty (the coherence terms, weighted 5x, are 0.98 of the loss at
                             initialisation and a still or empty matte minimises them); the L1
                             terms alone found people on held-out footage in ten CPU-minutes.
                             RVM adds them to a network that starts from pretrained weights.
    warmup_steps, total_steps, final_lr_fraction
                             linear warm-up, then cosine decay to final_lr_fraction of each
                             group's rate at total_steps: a function of the step only, so a
                             resumed run follows the same schedule

The learning rate of parameter group g at step k:
    lr_g(k) = base_g * min(1, (k + 1) / warmup) * (f + (1 - f) * (1 + cos(pi * min(k / total, 1))) / 2)
"""

import math

import torch

from bimatting.models.bimatting.binarize import BiConv2d, BinaryActivation
from bimatting.train.settings import Recipe  # noqa: F401  (the recipe is read from here too)


def latent_parameters(model):
    """The latent weights of every binary conv (their signs are the deployed weights)."""
    return [m.weight for m in model.modules() if isinstance(m, BiConv2d)]


def parameter_groups(model, recipe, stage_rates=None, group_of=None):
    """Adam groups [{'params', 'lr', 'base_lr', 'name'}]: 'latent' (every binary conv's weight) at
    recipe.latent_lr; the other parameters at recipe.float_lr, or, for RVM's stages, one group per
    module group (`group_of(name)`) at `stage_rates[group]`."""
    latent = {id(p) for p in latent_parameters(model)}
    rates = dict(stage_rates) if stage_rates else {"float": recipe.float_lr}
    rates["latent"] = recipe.latent_lr
    groups = {"latent": []}
    for name, parameter in model.named_parameters():
        key = "latent" if id(parameter) in latent else (group_of(name) if stage_rates else "float")
        groups.setdefault(key, []).append(parameter)
    return [
        {"params": params, "lr": rates[name], "base_lr": rates[name], "name": name}
        for name, params in groups.items()
        if params
    ]


def schedule_factor(recipe, step):
    warm = min(1.0, (step + 1) / max(recipe.warmup_steps, 1))
    f = recipe.final_lr_fraction
    progress = min(step / max(recipe.total_steps, 1), 1.0)
    return warm * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * progress)))


def apply_schedule(optimizer, recipe, step):
    """Set every group's lr (from its base_lr) and weight decay for `step`."""
    factor = schedule_factor(recipe, step)
    decay = recipe.weight_decay_step1 if step < recipe.binary_weights_from else 0.0
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
        group["weight_decay"] = decay


def set_binary_weights(model, enabled):
    """Two-step switch: binary convs use alpha * sign(w~) (enabled) or the real w (ReActNet step 1)."""
    for module in model.modules():
        if isinstance(module, BiConv2d):
            module.binarize_weights = bool(enabled)


def set_ste_window(model, window):
    """Every binary activation's straight-through window: "fixed" (|x| <= 1) or "spread"
    (|x| <= max(1, std_c(x)), binarize.spread_binary_activation)."""
    if window not in ("fixed", "spread"):
        raise ValueError(f"ste_window is 'fixed' or 'spread', got {window!r}")
    for module in model.modules():
        if isinstance(module, BinaryActivation):
            module.window = window


def binary_weights_at(recipe, step):
    return step >= recipe.binary_weights_from


def loss_terms_at(recipe, step):
    """The matting-loss terms trained at `step` (names of bimatting.train.losses.TERM_NAMES)."""
    terms = ["pha_l1", "fgr_l1"]
    if 0 <= recipe.laplacian_from <= step:
        terms.append("pha_laplacian")
    if 0 <= recipe.coherence_from <= step:
        terms += ["pha_coherence", "fgr_coherence"]
    return tuple(terms)


@torch.no_grad()
def init_latent_weights(model, scale, generator=None):
    """Latent weights := U(0, 1) * scale (ReActNet HardBinaryConv init); biases of binary convs kept."""
    for weight in latent_parameters(model):
        weight.copy_(torch.rand(weight.shape, generator=generator, dtype=weight.dtype) * scale)


@torch.no_grad()
def init_thresholds(model, forward):
    """Set each sign's learnable threshold to minus the per-channel median of its input, in one
    forward pass (`forward()` runs the model on the first batch): a pre-hook on each threshold sets
    it from what reaches it, so later thresholds see the already-balanced earlier signs.
    Returns {site name: median |input| after the shift} as a record."""
    handles, done = [], {}

    def hook_for(name):
        def hook(module, args):
            if name in done:
                return
            x = args[0].detach().float()
            median = x.transpose(0, 1).flatten(1).median(dim=1).values  # [C]
            module.bias.copy_(-median.view_as(module.bias))
            done[name] = float((x + module.bias).abs().median())

        return hook

    for name, threshold, _ in model.sign_sites():
        handles.append(threshold.register_forward_pre_hook(hook_for(name)))
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return done


def first_step_inits(model, recipe, teacher, forward):
    """Step 0 of a fresh run: the teacher's float heads (if asked and a teacher is given), then the
    sign thresholds from `forward()` on the first batch, with the weights in step 0's mode.
    Returns a record {'heads_from_teacher': [keys], 'threshold_init_sites': n}."""
    record = {}
    if recipe.heads_from_teacher and teacher is not None:
        record["heads_from_teacher"] = init_from_teacher(model, teacher)
    if recipe.threshold_init:
        set_binary_weights(model, binary_weights_at(recipe, 0))
        record["threshold_init_sites"] = len(init_thresholds(model, forward))
    return record


# (student parameter prefix, teacher prefix): float layers of BiMatting with the teacher's shapes
TEACHER_LAYERS = (
    ("backbone.feature.0.conv1", "backbone.features.0.0"),
    ("backbone.feature.0.bn1", "backbone.features.0.1"),
    ("decoder.decode0.conv.5", "decoder.decode0.conv.3"),
    ("decoder.decode0.conv.6", "decoder.decode0.conv.4"),
    ("project_mat.conv", "project_mat.conv"),
    ("project_seg.conv", "project_seg.conv"),
    ("refiner.box_filter", "refiner.box_filter"),
    ("refiner.conv.12", "refiner.conv.6"),
)


@torch.no_grad()
def init_from_teacher(student, teacher):
    """Copy the teacher's tensors into the TEACHER_LAYERS of `student` where shapes match.
    Returns the student keys copied."""
    theirs = teacher.state_dict()
    ours = student.state_dict()
    copied = []
    for mine, source in TEACHER_LAYERS:
        for key, value in ours.items():
            if not key.startswith(mine + "."):
                continue
            other = source + key[len(mine) :]
            if other in theirs and theirs[other].shape == value.shape:
                value.copy_(theirs[other])
                copied.append(key)
    return copied
