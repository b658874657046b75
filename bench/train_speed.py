#!/usr/bin/env python
"""Training throughput of BiMatting's distillation step: samples (128x128 crops) per CPU-second.

One step = forward, the recipe's loss (L1 terms, full size and coarse), backward and Adam on
4 clips x 2 frames of 128x128 (random data: the cost does not depend on the values), one thread.
Variants run side by side in one process, steps interleaved, so machine noise hits them alike.

    python bench/train_speed.py                  # eager variants
    python bench/train_speed.py --compile        # also torch.compile of the step, float32 and
                                                 # bfloat16 (minutes to compile each)
"""

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn import functional as F

from bimatting.models import build_model
from bimatting.models.bimatting import bimobilenet, binarize, decoder
from bimatting.train import losses, passes, recipe as recipes

BATCH, FRAMES, SIZE = 4, 2, 128


class _SignSTEBefore(torch.autograd.Function):
    """The activation sign as it was: torch.where on a bool mask forward, the input saved, and
    torch.where again backward (the bool paths cost ~10x a float op on this CPU)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def _average_pool2_before(x):
    """average_pool2 as it was for every size: two F.avg_pool2d of two taps (the same bits)."""
    rows = F.avg_pool2d(x, (1, 2), (1, 2), ceil_mode=True, count_include_pad=False)
    return F.avg_pool2d(rows, (2, 1), (2, 1), ceil_mode=True, count_include_pad=False)


@contextlib.contextmanager
def before():
    """The step as it was when the throughput goal was set (the sign and pooling of then)."""
    kept = binarize._SignSTE, bimobilenet.average_pool2, decoder.average_pool2
    binarize._SignSTE = _SignSTEBefore
    bimobilenet.average_pool2 = decoder.average_pool2 = _average_pool2_before
    try:
        yield
    finally:
        binarize._SignSTE, bimobilenet.average_pool2, decoder.average_pool2 = kept


def bfloat16_autocast():
    """Convolutions and matmuls in bfloat16 (AVX-512 BF16 where the CPU has it), the rest float32."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def make_step(channels_last=False, compiled=False, seed=0):
    torch.manual_seed(seed)
    model = build_model("bimatting").train()
    model.straight_through_clamp = True
    g = torch.Generator().manual_seed(seed)
    src, fgr = (torch.rand(BATCH, FRAMES, 3, SIZE, SIZE, generator=g) for _ in range(2))
    pha = torch.rand(BATCH, FRAMES, 1, SIZE, SIZE, generator=g)
    recipes.init_thresholds(model, lambda: model(src))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(recipes.parameter_groups(model, recipes.Recipe()))

    def loss_of(src, fgr, pha):
        pred = passes.student_outputs(model, src, 1.0)
        return losses.student_matting_loss(pred, fgr, pha, ("pha_l1", "fgr_l1"))["total"]

    loss_fn = torch.compile(loss_of) if compiled else loss_of

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(src, fgr, pha).backward()
        optimizer.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    variants = {
        "before (where on bool masks, avg_pool2d)": (make_step(), before),
        "default": (make_step(), contextlib.nullcontext),
        "default + channels_last": (make_step(channels_last=True), contextlib.nullcontext),
        "default + bfloat16 autocast": (make_step(), bfloat16_autocast),
    }
    if args.compile:
        variants["default + torch.compile"] = (make_step(compiled=True), contextlib.nullcontext)
        variants["default + bfloat16 + torch.compile"] = (make_step(compiled=True), bfloat16_autocast)
    for name, (step, context) in variants.items():  # warm-up (and compile) outside the timing
        started = time.process_time()
        with context():
            step()
            step()
        print(f"warm-up {name}: {time.process_time() - started:.1f} CPU-s", flush=True)
    seconds = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, (step, context) in variants.items():
            with context():
                started = time.process_time()
                step()
                seconds[name].append(time.process_time() - started)
    base = statistics.median(seconds[next(iter(variants))])
    print(f"\n{'variant':48s} {'s/step':>8s} {'samples/CPU-s':>14s} {'vs before':>10s}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:48s} {median:8.3f} {BATCH * FRAMES / median:14.2f} {base / median:9.2f}x")


if __name__ == "__main__":
    main()
