"""Supervisely Person Dataset reader for the segmentation pass: `<root>/img/*` and `<root>/seg/*`,
sorted and paired one to one (RVM's `spd_preprocess.py` layout; masks 255 = person).

    SuperviselyPersonDataset(root, size=512, transform=None)
    dataset[i] -> img [1,3,S,S], seg [1,1,S,S]
"""

from torch.utils.data import Dataset

from bimatting.data.dataset_files import image_files, read_mask, read_rgb, require_folders
from bimatting.data.seg_augment import SegmentationAugmentation
from bimatting.errors import InputError

LAYOUT = "<root>/img/<name>.png + <root>/seg/<name>.png (SPD, paired in sorted order)"


class SuperviselyPersonDataset(Dataset):
    def __init__(self, root, size=512, transform=None):
        self.images = image_files(require_folders(root, "img", expected=LAYOUT), LAYOUT)
        self.masks = image_files(require_folders(root, "seg", expected=LAYOUT), LAYOUT)
        if len(self.images) != len(self.masks):
            raise InputError(
                f"'{root}' has {len(self.images)} images but {len(self.masks)} masks; expected the layout {LAYOUT}"
            )
        self.size = size
        self.transform = transform if transform is not None else SegmentationAugmentation.image(size)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        img = read_rgb(self.images[index], self.size)  # [3,H,W]
        seg = read_mask(self.masks[index], self.size, nearest=True)  # [1,H,W]
        return self.transform(img[None], seg[None])
