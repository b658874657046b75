"""`bimatting test`: run a model over an evaluation set, write its predictions, score them."""

import json
import math
import os
from pathlib import Path

import click

import bimatting
from bimatting.atomic import atomic_dir, atomic_path
from bimatting.cli.evaluate_cmd import print_evaluation


@click.command("test")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Evaluation set: <data>/<subset>/<clip>/{com,pha,fgr}/NNNN.png (e.g. videomatte_512x288).",
)
@click.option(
    "--checkpoint",
    default="default",
    show_default=True,
    help="Checkpoint file, 'rvm' (RVM's official weights, the teacher) or 'default'.",
)
@click.option("--arch", type=click.Choice(["rvm", "bimatting"]), help="Expected architecture of the checkpoint.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Prediction folder (replaced atomically). Default: ./<data name>-pred",
)
@click.option(
    "--hr/--lr",
    "hr",
    default=None,
    help="Evaluator. Default: HR when frames are larger than 512 px on their long side.",
)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def test(data_dir, checkpoint, arch, out_dir, hr, device, as_json):
    """Run a model over an evaluation set and score it as the official test script does.

    Recurrent inference one frame at a time over every clip's com/ frames (states reset per
    clip, downsample ratio min(512/max(h,w), 1)), predictions written as pha/ and fgr/ PNG (JPG
    when the truth is JPG), then `bimatting evaluate`. The summary is also saved as
    <out>/metrics.json and the per-clip means as <out>/clips.csv.

    \b
    Examples:
      bimatting test --data videomatte_512x288 --json              # packaged BiMatting
      bimatting test --data videomatte_512x288 --checkpoint rvm    # the RVM teacher
      bimatting test --data synth/ --checkpoint runs/stage4.pth --out pred/
    """
    from bimatting.eval.evaluate import evaluate
    from bimatting.eval.predict import predict_set
    from bimatting.eval.tree import check_output_folder, find_clips, frame_names
    from bimatting.matting.frames import read_image

    clips = find_clips(data_dir, "com", "data set")  # layout errors before loading
    out_dir = Path(out_dir) if out_dir else Path.cwd() / f"{Path(data_dir).resolve().name}-pred"
    check_output_folder(out_dir, data_dir)  # it is replaced as a whole
    if hr is None:
        first = clips[0].folder(data_dir, "com")
        names = frame_names(first)
        hr = bool(names) and max(read_image(first / names[0]).shape[:2]) > 512
    model = bimatting.load_model(checkpoint, arch=arch)
    with atomic_dir(out_dir) as tmp:
        predict_set(model, data_dir, tmp, device=device)
    result = evaluate(out_dir, data_dir, hr=hr, workers=min(8, os.cpu_count() or 1))
    summary = {m: (None if math.isnan(v) else v) for m, v in result.summary.items()}
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(
            json.dumps({"checkpoint": str(checkpoint), "evaluator": "hr" if hr else "lr", "metrics": summary}, indent=2)
            + "\n"
        )
    result.write_csv(out_dir / "clips.csv")
    print_evaluation(result, as_json)
