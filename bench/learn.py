#!/usr/bin/env python
"""Does the distillation learn? Train from scratch for a fixed CPU budget, score held-out clips.

Runs the project's distillation (bimatting.train.distill, the default recipe unless changed by the
options) on the clips of people under DATA/people/clips minus the held-out ones, one thread, and
every --eval-minutes of training time scores the named held-out clips (first 32 frames at long
side 512, eval mode, binary weights, states carried) against the RVM teacher, beside what an
empty matte scores there. Prints a table per evaluation and writes learn.json and a curve.

    python bench/learn.py                               # 30 CPU-minutes, the default recipe
    python bench/learn.py --minutes 10 --data views     # the moving-view batches instead
    python bench/learn.py --laplacian-from 0 --coherence-from 0   # RVM's full loss from step 0

The teacher's targets are cached in --work (first run: a few minutes more).
"""

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from bimatting.train.settings import DistillOptions, Recipe

# scored: a street crowd (small people) and a talking head; held out of training with two more
# clips of people, as in the measurements of training/README.md
HELDOUT = ("facenet_arcade_pedestrians", "retalking_woman_blue_studio")
NOT_TRAINED = ("hybrik_taiji_indoor", "liveportrait_woman_lakeshore_windy_hair")


def options_from(args):
    clips = Path(args.data) / "people" / "clips"
    if not clips.is_dir():
        raise SystemExit(f"error: no clips under '{clips}'; give --data, the folder holding people/clips")
    missing = [name for name in args.heldout if not (clips / name).exists()]
    if missing:
        raise SystemExit(f"error: held-out clip '{missing[0]}' is not under '{clips}'; name clips of that folder")
    recipe = Recipe(
        latent_lr=args.latent_lr,
        float_lr=args.float_lr,
        adapter_weight=args.adapter_weight,
        laplacian_from=args.laplacian_from,
        coherence_from=args.coherence_from,
        warmup_steps=100,
        total_steps=args.total_steps,
    )
    return DistillOptions(
        footage=(clips,),
        heldout=tuple(str(clips / name) for name in args.heldout),
        excluded=tuple(str(clips / name) for name in args.not_trained),
        out=Path(args.work),
        data=args.data_mode,
        hr_every=args.hr_every,
        ema_decay=args.ema_decay,
        seed=args.seed,
        threads=1,
        progress=False,
        recipe=recipe,
    )


def table(rows):
    head = f"{'CPU-min':>7s} {'steps':>6s}  " + "  ".join(f"{name[:26]:>26s}" for name in rows[0]["clips"])
    lines = [head, f"{'':>7s} {'':>6s}  " + "  ".join(f"{'MAD e-3 (empty) IoU':>26s}" for _ in rows[0]["clips"])]
    for row in rows:
        cells = [
            f"{c['pha_mad'] * 1e3:7.1f} ({c['zero_pha_mad'] * 1e3:5.1f}) {c['iou']:5.2f}" for c in row["clips"].values()
        ]
        lines.append(
            f"{row['minutes']:7.1f} {row['steps']:6d}  "
            + "  ".join(f"{cell:>26s}" for cell in cells)
            + f"   [{row['weights']}]"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding people/clips")
    parser.add_argument("--heldout", nargs="+", default=list(HELDOUT), help="clip names never trained on")
    parser.add_argument(
        "--not-trained", nargs="*", default=list(NOT_TRAINED), help="more clips kept out of training, not scored"
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="training CPU budget (one thread)")
    parser.add_argument("--eval-minutes", type=float, default=10.0)
    parser.add_argument(
        "--work",
        default=os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "bimatting", "learn-bench"),
    )
    parser.add_argument("--data-mode", choices=("crops", "views"), default="crops")
    parser.add_argument("--hr-every", type=int, default=0)
    parser.add_argument("--laplacian-from", type=int, default=-1)
    parser.add_argument("--coherence-from", type=int, default=-1)
    parser.add_argument(
        "--adapter-weight",
        type=float,
        default=0.0,
        help="encoder features matched to the teacher's through training-only adapters",
    )
    parser.add_argument("--latent-lr", type=float, default=5e-3)
    parser.add_argument("--float-lr", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--total-steps", type=int, default=40000, help="length of the rate schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="learn.json")
    args = parser.parse_args()

    from bimatting.train.distill import Distillation  # noqa: PLC0415 - torch loads after the options are read

    options = options_from(args)
    run = Distillation(options)
    rows, trained, next_eval = [], 0.0, args.eval_minutes * 60
    while trained < args.minutes * 60:
        started = time.process_time()
        run.train_step()
        trained += time.process_time() - started
        if trained >= next_eval or trained >= args.minutes * 60:
            next_eval += args.eval_minutes * 60
            live = run.evaluate()
            averaged = run.evaluate(averaged=True) if run.average else None
            for name, figures in (("live", live), ("average", averaged)):
                if figures:
                    rows.append(
                        {
                            "minutes": trained / 60,
                            "steps": run.step,
                            "weights": name,
                            "clips": {c["clip"]: c for c in figures["clips"]},
                        }
                    )
            print(table(rows[-2:] if averaged else rows[-1:]), flush=True)
    record = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "recipe": dataclasses.asdict(options.recipe),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=1))
    print("\n" + table(rows))
    last = [row for row in rows if row["steps"] == run.step]
    for row in last:
        clips = row["clips"].values()
        beaten = sum(c["pha_mad"] < c["zero_pha_mad"] for c in clips)
        milestone = sum(c["pha_mad"] <= 0.5 * c["zero_pha_mad"] and c["iou"] >= 0.75 for c in clips)
        print(
            f"{row['weights']} weights: beat the empty matte on {beaten}/{len(clips)} held-out clips; "
            f"MAD <= half the empty matte's and IoU >= 0.75 on {milestone}/{len(clips)}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
