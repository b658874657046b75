"""The evaluation-set layout shared by ground truth and predictions (RVM's), and its checks.

    <root>/<subset>/<clip>/{com,pha,fgr}/<NNNN>.<png|jpg>

e.g. `videomatte_512x288/videomatte_motion/0000/pha/0000.png`. Inputs live in `com/`, true or
predicted alpha in `pha/`, foreground in `fgr/`. Frame names are 4-digit indices from 0000; the
ground truth uses PNG at 512x288 and JPG at 1920x1080, and predictions must use the same names
(the official evaluators open the truth under the prediction's file name).
"""

from dataclasses import dataclass
from pathlib import Path

from bimatting.errors import InputError
from bimatting.matting.frames import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Clip:
    subset: str  # e.g. "videomatte_motion"
    name: str  # e.g. "0000"

    @property
    def key(self):
        return f"{self.subset}/{self.name}"

    def folder(self, root, kind):
        return Path(root) / self.subset / self.name / kind


def frame_names(folder):
    """Sorted image file names of a folder ([] when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_clips(root, kind, role):
    """Every <subset>/<clip> of `root` that has a `kind/` folder (sorted); InputError if none.

    role ("truth", "prediction", "data set") only words the error message.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            f"{role} folder '{root}' does not exist; expected "
            f"<root>/<subset>/<clip>/{kind}/<NNNN>.png (RVM's evaluation layout)"
        )
    clips = [
        Clip(subset.name, clip.name)
        for subset in sorted(p for p in root.iterdir() if p.is_dir())
        for clip in sorted(p for p in subset.iterdir() if p.is_dir())
        if (clip / kind).is_dir()
    ]
    if not clips:
        raise InputError(
            f"{role} folder '{root}' holds no <subset>/<clip>/{kind}/ folders; expected "
            f"e.g. '{root}/videomatte_motion/0000/{kind}/0000.png' (RVM's evaluation layout)"
        )
    return clips


def match_trees(pred_root, true_root):
    """Pair prediction and truth clip by clip and frame by frame.

    Returns [(clip, frame_names, has_fgr)]. The prediction must hold exactly the truth's clips,
    and in each clip exactly the truth's pha/ (and fgr/, when the truth has it) file names;
    the first difference raises InputError naming it.
    """
    true_clips = find_clips(true_root, "pha", "truth")
    pred_clips = set(find_clips(pred_root, "pha", "prediction"))
    for clip in true_clips:
        if clip not in pred_clips:
            raise InputError(
                f"prediction '{pred_root}' lacks clip '{clip.key}' of the truth "
                f"(expected '{clip.folder(pred_root, 'pha')}')"
            )
    extra = sorted(pred_clips - set(true_clips), key=lambda c: c.key)
    if extra:
        raise InputError(
            f"prediction clip '{extra[0].key}' is not in the truth '{true_root}'; "
            "predict exactly the clips of the evaluation set"
        )
    pairs = []
    for clip in true_clips:
        names = _match_folder(clip, "pha", pred_root, true_root)
        if not names:
            raise InputError(f"truth folder '{clip.folder(true_root, 'pha')}' holds no frames")
        has_fgr = clip.folder(true_root, "fgr").is_dir()
        if has_fgr:
            fgr_names = _match_folder(clip, "fgr", pred_root, true_root)
            if fgr_names != names:
                raise InputError(
                    f"truth '{clip.key}' has different frames in pha/ and fgr/; the ground truth is incomplete"
                )
        pairs.append((clip, names, has_fgr))
    return pairs


def _match_folder(clip, kind, pred_root, true_root):
    true_names = frame_names(clip.folder(true_root, kind))
    pred_folder = clip.folder(pred_root, kind)
    if not pred_folder.is_dir():
        raise InputError(f"prediction lacks folder '{pred_folder}' (the truth has {kind}/ for clip '{clip.key}')")
    pred_names = frame_names(pred_folder)
    for pred_name, true_name in zip(pred_names, true_names):
        if pred_name != true_name:
            raise InputError(
                f"prediction frame '{pred_folder / pred_name}' does not match the truth's "
                f"'{clip.folder(true_root, kind) / true_name}'; names and extensions must be equal"
            )
    if len(pred_names) < len(true_names):
        missing = true_names[len(pred_names)]
        raise InputError(
            f"prediction lacks frame '{pred_folder / missing}' (the truth has "
            f"{len(true_names)} frames in '{clip.key}/{kind}', the prediction {len(pred_names)})"
        )
    if len(pred_names) > len(true_names):
        raise InputError(
            f"prediction frame '{pred_folder / pred_names[len(true_names)]}' is not in the truth "
            f"(the truth has {len(true_names)} frames in '{clip.key}/{kind}')"
        )
    return true_names


REPORT_FILES = {"metrics.json", "clips.csv"}


def check_output_folder(out, *protected):
    """Refuse an output folder that would replace something that is not an earlier output.

    The folder is replaced as a whole, so it must be absent, empty, or a tree in this layout
    (subset/clip/pha folders plus the report files); it must not hold, or lie inside, a folder
    in `protected` (e.g. the evaluation set being read).
    """
    out = Path(out).resolve()
    for folder in map(lambda p: Path(p).resolve(), protected):
        if out == folder or folder.is_relative_to(out) or out.is_relative_to(folder):
            raise InputError(f"output '{out}' overlaps the input '{folder}'; choose an --out outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"output '{out}' is a file; give a folder path for --out")
    for entry in out.iterdir():
        if entry.is_file() and entry.name in REPORT_FILES:
            continue
        clips = [c for c in entry.iterdir() if c.is_dir()] if entry.is_dir() else []
        if not clips or not all((c / "pha").is_dir() for c in clips):
            raise InputError(
                f"output '{out}' exists and holds '{entry.name}', which is not part of an "
                "evaluation tree; choose another --out or remove it (it would be replaced)"
            )
