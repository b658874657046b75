#!/usr/bin/env python
"""How close to a tie a BiMatting's sign decisions sit on real footage: per sign site, the share of
pre-sign values within `--band` of zero (a value that close can take the other sign in another
runtime, whose float rounding differs by ~1e-7..1e-5, and the flip cascades through the binary
layers and the recurrent state), and how concentrated they are in one channel.

    python bench/sign_margins.py FOOTAGE [--model default] [--resolution 512x288] [--ratio 1]
                                 [--frames 10] [--band 1e-5] [--json]

A site whose near-zero values crowd into one channel has a *systematic* tie (a constant input such
as a zero state or a flat border meeting a threshold at ~0): it recurs on any footage, and moving
that channel's threshold off zero removes it. Near-zero values spread evenly over the channels are
the continuous density of a trained network: no threshold placement removes those on unseen
footage; only the same float arithmetic in every runtime does. `bimatting export --verify --exact`
shows where two runtimes actually part.
"""

import argparse
import json
import sys

import numpy as np

import bimatting
from bimatting.errors import InputError
from bimatting.matting.frames import iter_frames
from bimatting.recurrent import recurrent_step

SYSTEMATIC_SHARE = 0.5  # one channel holding at least this share of a site's near-zero values


def measure(model, frames, ratio, band):
    """{site: {"decisions", "near_zero", "exact_zero", "per_channel"}} over `frames` (states carried)."""
    import torch

    from bimatting.models.bimatting.binarize import BinaryActivation  # noqa: PLC0415 - torch loads in the measurement

    names = {module: name for name, module in model.named_modules() if isinstance(module, BinaryActivation)}
    sites = {}

    def hook(module, inputs, output):
        x = inputs[0].detach()
        near = (x.abs() < band).sum(dim=(0, 2, 3)).numpy()
        site = sites.setdefault(
            names[module],
            {"decisions": 0, "near_zero": 0, "exact_zero": 0, "per_channel": np.zeros(x.shape[1], np.int64)},
        )
        site["decisions"] += x.numel()
        site["near_zero"] += int(near.sum())
        site["exact_zero"] += int((x == 0).sum())
        site["per_channel"] += near

    handles = [m.register_forward_hook(hook) for m in names]
    states = None
    try:
        with torch.no_grad():
            for frame in frames:
                src = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)[None]))
                _, states = recurrent_step(model, src, states, ratio, return_coarse=False)
    finally:
        for handle in handles:
            handle.remove()
    return sites


def summarize(sites, frames):
    rows = []
    for name, site in sites.items():
        top = int(site["per_channel"].argmax())
        share = site["per_channel"][top] / site["near_zero"] if site["near_zero"] else 0.0
        rows.append(
            {
                "site": name,
                "decisions_per_frame": site["decisions"] // frames,
                "near_zero_ppm": site["near_zero"] / site["decisions"] * 1e6,
                "near_zero_per_frame": site["near_zero"] / frames,
                "exact_zero": site["exact_zero"],
                "top_channel": top,
                "top_channel_share": float(share),
                "systematic": bool(site["near_zero"] >= frames and share >= SYSTEMATIC_SHARE),
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("footage", help="a video or a folder of frames")
    parser.add_argument("--model", default="default", help="'default', a checkpoint or a packed .npz")
    parser.add_argument("--resolution", default="512x288", help="WxH the frames are resized to")
    parser.add_argument("--ratio", type=float, default=1.0, help="downsample ratio s")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--band", type=float, default=1e-5, help="|x| below this counts as near zero")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    try:
        width, height = (int(v) for v in args.resolution.lower().split("x"))
        model = bimatting.load_model(args.model, "bimatting").eval()
        frames = list(iter_frames(args.footage, size=(width, height), limit=args.frames))
    except (InputError, ValueError) as error:
        sys.exit(f"error: {error}")
    if not frames:
        sys.exit(f"error: no frames in '{args.footage}'")
    rows = summarize(measure(model, frames, args.ratio, args.band), len(frames))
    if args.json:
        print(
            json.dumps(
                {
                    "footage": args.footage,
                    "resolution": [width, height],
                    "ratio": args.ratio,
                    "frames": len(frames),
                    "band": args.band,
                    "sites": rows,
                },
                indent=2,
            )
        )
        return
    print(
        f"{len(frames)} frames of {args.footage} at {width}x{height}, s={args.ratio:g}; near zero: |x| < {args.band:g}"
    )
    print(f"{'sign site':<36}{'decisions/frame':>16}{'near-zero ppm':>15}{'per frame':>11}{'top channel':>18}")
    for row in rows:
        flag = "  systematic" if row["systematic"] else ""
        print(
            f"{row['site']:<36}{row['decisions_per_frame']:>16,}{row['near_zero_ppm']:>15.1f}"
            f"{row['near_zero_per_frame']:>11.1f}{row['top_channel']:>8} ({row['top_channel_share']:.0%}){flag}"
        )
    total = sum(r["near_zero_per_frame"] for r in rows)
    print(
        f"near-zero decisions per frame: {total:.0f} of {sum(r['decisions_per_frame'] for r in rows):,}; "
        f"systematic sites: {', '.join(r['site'] for r in rows if r['systematic']) or 'none'}"
    )


if __name__ == "__main__":
    main()
