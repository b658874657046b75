"""COCO panoptic reader for the segmentation pass: `train2017/*.jpg`, `panoptic_train2017/*.png`
and `annotations/panoptic_train2017.json`.

    CocoPanopticDataset(image_dir, mask_dir, annotation_file, size=512, transform=None)
    dataset[i] -> img [1,3,S,S], seg [1,1,S,S] (T = 1; the trainer batches B*T images)

Only images holding a person are kept. The mask is the union of segments of category 1
(person), 27 (backpack) and 32 (tie); a panoptic PNG stores segment id = R + 256 G + 256^2 B
(RVM `dataset/coco.py`).
"""

import json
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from bimatting.data.dataset_files import downsample_if_needed, image_to_float_tensor, read_rgb, require_folders
from bimatting.data.seg_augment import SegmentationAugmentation
from bimatting.errors import InputError

LAYOUT = "train2017/<id>.jpg + panoptic_train2017/<id>.png + annotations/panoptic_train2017.json (COCO panoptic)"
PERSON = 1
FOREGROUND_CATEGORIES = (1, 27, 32)  # person, backpack, tie


def panoptic_mask(rgb, segments):
    """[H,W,3] uint8 panoptic PNG (RGB) + segments_info -> [H,W] uint8 mask (255 = person)."""
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    ids = r + 256 * g + 256 * 256 * b
    keep = [s["id"] for s in segments if s["category_id"] in FOREGROUND_CATEGORIES]
    return np.where(np.isin(ids, keep), 255, 0).astype(np.uint8)


class CocoPanopticDataset(Dataset):
    def __init__(self, image_dir, mask_dir, annotation_file, size=512, transform=None):
        self.image_dir = require_folders(image_dir, expected=LAYOUT)
        self.mask_dir = require_folders(mask_dir, expected=LAYOUT)
        if not Path(annotation_file).is_file():
            raise InputError(f"missing file '{annotation_file}'; expected the layout {LAYOUT}")
        with open(annotation_file) as handle:
            annotations = json.load(handle)["annotations"]
        self.items = [a for a in annotations if any(s["category_id"] == PERSON for s in a["segments_info"])]
        self.size = size
        self.transform = transform if transform is not None else SegmentationAugmentation.image(size)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        import cv2  # noqa: PLC0415 - OpenCV loads on first use

        item = self.items[index]
        img = read_rgb(self.image_dir / item["file_name"].replace(".png", ".jpg"), self.size)  # [3,H,W]
        png = cv2.imread(str(self.mask_dir / item["file_name"]), cv2.IMREAD_COLOR)
        if png is None:
            raise InputError(f"cannot read panoptic mask '{self.mask_dir / item['file_name']}'")
        mask = panoptic_mask(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), item["segments_info"])
        seg = image_to_float_tensor(downsample_if_needed(mask, self.size, nearest=True))  # [1,H,W]
        return self.transform(img[None], seg[None])


def coco_from_root(root, split="train2017", **kw):
    """CocoPanopticDataset of a COCO root holding <split>/, panoptic_<split>/ and
    annotations/panoptic_<split>.json; the first missing folder or file is named."""
    root = Path(root)
    require_folders(root, split, expected=LAYOUT)
    require_folders(root, f"panoptic_{split}", expected=LAYOUT)
    require_folders(root, "annotations", expected=LAYOUT)
    return CocoPanopticDataset(
        root / split, root / f"panoptic_{split}", root / "annotations" / f"panoptic_{split}.json", **kw
    )
