#!/usr/bin/env python
"""Which pieces of the binary-network recipe make BiMatting learn: fit a few fixed frames.

BiMatting fits 4 fixed frames (2 clips x 2 frames, 160x96) of real footage to the RVM
teacher's mattes for a number of Adam steps, once per recipe variant, from the same random
start; the table gives pha mean |diff| against the teacher on those frames (train mode and
eval mode) and an all-zero matte's figure. A small, quick stand-in for held-out agreement per
CPU-hour: a recipe that cannot fit four frames cannot learn from thousands.

    python bench/recipe_fit.py CLIP [--steps 150] [--threads 1]
"""

import argparse
import dataclasses
import time

import cv2
import torch

from bimatting.matting.frames import iter_frames_uint8
from bimatting.models import build_model
from bimatting.train import losses, passes, recipe as recipes
from bimatting.train.clips import frames_to_float_tensor
from bimatting.train.features import FeatureTaps, feature_distillation
from bimatting.weights.checkpoints import load_model

BASE = recipes.Recipe(feature_weight=0.0, heads_from_teacher=False, warmup_steps=10)
VARIANTS = {
    "one rate 5e-4, zero thresholds": recipes.Recipe.plain(5e-4, 150),
    "latent 5e-3 / float 5e-4": dataclasses.replace(BASE, threshold_init=False),
    "+ thresholds from data": BASE,
    "+ teacher heads": dataclasses.replace(BASE, heads_from_teacher=True),
    "+ decoder features x1": dataclasses.replace(BASE, heads_from_teacher=True, feature_weight=1.0),
    "+ decoder features x0.1": dataclasses.replace(BASE, heads_from_teacher=True, feature_weight=0.1),
    "+ encoder attention x1": dataclasses.replace(BASE, heads_from_teacher=True, attention_weight=1.0),
    "two-step (real weights to 50)": dataclasses.replace(BASE, heads_from_teacher=True, binary_weights_from=50),
    "latent init rand*1e-3": dataclasses.replace(BASE, heads_from_teacher=True, latent_init=1e-3),
}


def fit(recipe, src, target, teacher, steps, seed=0):
    torch.manual_seed(seed)
    model = build_model("bimatting").train()
    model.straight_through_clamp = True
    if recipe.latent_init:
        recipes.init_latent_weights(model, recipe.latent_init, torch.Generator().manual_seed(seed))
    if recipe.heads_from_teacher:
        recipes.init_from_teacher(model, teacher)
    if recipe.threshold_init:
        recipes.init_thresholds(model, lambda: model(src))
    optimizer = torch.optim.Adam(recipes.parameter_groups(model, dataclasses.replace(recipe, total_steps=steps)))
    theirs = None
    if recipe.feature_weight or recipe.attention_weight:
        with torch.no_grad(), FeatureTaps(teacher, bool(recipe.feature_weight), bool(recipe.attention_weight)) as taps:
            teacher(src)
        theirs = taps.features
    for step in range(steps):
        recipes.apply_schedule(optimizer, dataclasses.replace(recipe, total_steps=steps), step)
        recipes.set_binary_weights(model, recipes.binary_weights_at(recipe, step))
        optimizer.zero_grad(set_to_none=True)
        with FeatureTaps(model, bool(recipe.feature_weight), bool(recipe.attention_weight)) as mine:
            pred = passes.student_outputs(model, src, 1.0)
        loss = losses.student_matting_loss(pred, target["fgr"], target["pha"])["total"]
        if theirs is not None:
            loss = (
                loss
                + feature_distillation(mine.features, theirs, recipe.feature_weight, recipe.attention_weight)[
                    "feature_total"
                ]
            )
        loss.backward()
        optimizer.step()
    recipes.set_binary_weights(model, True)
    with torch.no_grad():
        train_mad = float((passes.student_outputs(model, src, 1.0)["pha"] - target["pha"]).abs().mean())
        model.eval()
        eval_mad = float((model(src)[1] - target["pha"]).abs().mean())
    return train_mad, eval_mad


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    frames = list(iter_frames_uint8(args.clip, limit=40))
    picks = [frames[0], frames[1], frames[len(frames) // 2], frames[len(frames) // 2 + 1]]
    picks = [cv2.resize(f, (160, 96), interpolation=cv2.INTER_AREA) for f in picks]
    src = frames_to_float_tensor(picks).view(2, 2, 3, 96, 160)
    teacher = load_model("rvm").eval()
    with torch.no_grad():
        out = teacher(src)
    target = {"fgr": out[0], "pha": out[1]}
    print(
        f"{args.steps} steps, 4 frames of {args.clip} at 160x96; all-zero matte: "
        f"{float(target['pha'].abs().mean()) * 1e3:.1f}e-3"
    )
    print("| variant | pha MAD x1e3 train mode | eval mode | seconds |\n|---|---|---|---|")
    for name, recipe in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        train_mad, eval_mad = fit(recipe, src, target, teacher, args.steps)
        print(
            f"| {name} | {train_mad * 1e3:.1f} | {eval_mad * 1e3:.1f} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
