"""`bimatting data`: make and check datasets."""

import json
import re

import click

from bimatting import data as datasets
from bimatting.errors import InputError


def parse_size(text):
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match:
        raise InputError(f"size '{text}' is not WIDTHxHEIGHT; expected e.g. 512x288")
    return int(match.group(1)), int(match.group(2))


@click.group("data")
def data():
    """Make and check datasets (e.g. synthetic composites with known alpha).

    \b
    Examples:
      bimatting data synth --out synth_512x288
      bimatting data synth --out synth --footage clips/walk.mp4 --clips 4 --frames 50
      bimatting data check videomatte /data/VideoMatte240K_JPEG_SD
    """


KINDS = ("videomatte", "imagematte", "background-images", "background-videos", "coco", "spd", "youtubevis")


def open_dataset(kind, root, split):
    """The reader of `kind` on `root` (its layout checked); returns (description, item count)."""
    if kind in ("videomatte", "imagematte"):
        backgrounds = _NoBackgrounds()
        reader = (datasets.VideoMatteDataset if kind == "videomatte" else datasets.ImageMatteDataset)(
            root, backgrounds, split=split
        )
        count = len(reader.index) if kind == "videomatte" else len(reader.fgr_files)
        return ("sequences" if kind == "videomatte" else "images"), count
    if kind == "background-images":
        return "images", len(datasets.Backgrounds(image_dir=root).images)
    if kind == "background-videos":
        return "clips", len(datasets.Backgrounds(video_dir=root).videos)
    if kind == "coco":
        return "images with people", len(datasets.coco_from_root(root, split=f"{split}2017"))
    if kind == "spd":
        return "images", len(datasets.SuperviselyPersonDataset(root))
    return "frames of videos with people", len(datasets.youtubevis_from_root(root))


class _NoBackgrounds:
    """Stand-in for a layout check: matting readers only touch backgrounds when an item is read."""

    def __len__(self):
        return 0


@data.command("check", short_help="Check a dataset's layout and count its items.")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("root", type=click.Path())
@click.option("--split", default="train", show_default=True, help="train or valid (COCO: train -> train2017).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(kind, root, split, as_json):
    """Check that ROOT is in the layout the KIND reader expects and count its items.

    \b
    Layouts:
      videomatte         <root>/{train,valid}/{fgr,pha}/<clip>/<frame>.jpg
      imagematte         <root>/{train,valid}/{fgr,pha}/<name>
      background-images  <root>/<name>.jpg
      background-videos  <root>/<clip>/<frame>.jpg
      coco               <root>/{train2017,panoptic_train2017}/, annotations/panoptic_train2017.json
      spd                <root>/{img,seg}/
      youtubevis         <root>/JPEGImages/<video>/<frame>.jpg, <root>/instances.json
    \b
    Example:
      bimatting data check videomatte /data/VideoMatte240K_JPEG_SD --split valid
    """
    what, count = open_dataset(kind, root, split)
    if as_json:
        click.echo(json.dumps({"kind": kind, "root": str(root), "split": split, "items": count, "unit": what}))
    else:
        click.echo(f"{kind} '{root}': {count} {what}")


@data.command("synth", short_help="Write a composited evaluation set with known alpha.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write (built aside, then renamed into place).",
)
@click.option("--clips", default=5, show_default=True, type=click.IntRange(1), help="Clips per subset.")
@click.option("--frames", default=100, show_default=True, type=click.IntRange(1), help="Frames per clip.")
@click.option("--size", default="512x288", show_default=True, help="Frame size WIDTHxHEIGHT.")
@click.option(
    "--footage",
    multiple=True,
    type=click.Path(exists=False),
    help="Real footage (video or frame folder) matted by the RVM teacher for foregrounds; repeatable.",
)
@click.option(
    "--backgrounds",
    multiple=True,
    type=click.Path(exists=False),
    help="Background images, image folders or videos; repeatable. Default: procedural textures.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same set).")
@click.option(
    "--teacher",
    default="rvm",
    show_default=True,
    help="Model that mattes the footage: 'rvm' (official weights) or a checkpoint/ONNX file.",
)
@click.option("--device", default="cpu", show_default=True, help="torch device for the teacher.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def synth(out_dir, clips, frames, size, footage, backgrounds, seed, teacher, device, as_json):
    """Write a composited evaluation set with known alpha in RVM's evaluation layout.

    <out>/videomatte_{motion,static}/<clip>/{com,fgr,pha,bgr}/NNNN.png. Foregrounds come from
    the RVM teacher's fgr/pha on --footage (even clips) and from procedural soft-edged figures;
    motion clips get a drifting background, static clips a still one. Score a model on it with
    `bimatting test --data <out>`.

    \b
    Examples:
      bimatting data synth --out synth --clips 2 --frames 8 --size 256x144
      bimatting data synth --out synth --footage frames/ --footage walk.mp4 --seed 1
    """
    from bimatting.data.synth import synthesize

    width, height = parse_size(size)
    written = synthesize(
        out_dir,
        clips=clips,
        frames=frames,
        size=(width, height),
        footage=list(footage),
        backgrounds=list(backgrounds),
        seed=seed,
        teacher=teacher,
        device=device,
    )
    if as_json:
        click.echo(
            json.dumps({"out": str(out_dir), "size": [width, height], "frames": frames, "clips": written}, indent=2)
        )
    else:
        total = sum(map(len, written.values()))
        click.echo(f"wrote {total} clips x {frames} frames ({width}x{height}) to {out_dir}")
