"""ImageMatte reader (Distinctions-646 + Adobe Image Matting humans): `<root>/{train,valid}/{fgr,pha}/<name>`.

    ImageMatteDataset(root, backgrounds, split="train", size=512, seq_length=20,
                      transform=MotionAugmentation.imagematte(512))
    dataset[i] -> fgrs [T,3,S,S], phas [T,1,S,S], bgrs [T,3,S,S] float in [0, 1]

One image is repeated T times (the motion augmentation makes it move). As in RVM, an epoch has
max(images, background sources) items, item i reading image i modulo the image count.
"""

from torch.utils.data import Dataset

from bimatting.data.dataset_files import image_files, read_mask, read_rgb, require_folders
from bimatting.data.motion import MotionAugmentation
from bimatting.errors import InputError

LAYOUT = "<root>/{train,valid}/{fgr,pha}/<name>.jpg|png (ImageMatte)"


class ImageMatteDataset(Dataset):
    def __init__(self, root, backgrounds, split="train", size=512, seq_length=20, transform=None):
        fgr_root = require_folders(root, split, "fgr", expected=LAYOUT)
        pha_root = require_folders(root, split, "pha", expected=LAYOUT)
        self.fgr_files = image_files(fgr_root, LAYOUT)
        alphas = {p.stem: p for p in image_files(pha_root, LAYOUT)}
        missing = [f for f in self.fgr_files if f.stem not in alphas]
        if missing:
            raise InputError(f"alpha for '{missing[0]}' is missing in '{pha_root}'; expected the layout {LAYOUT}")
        self.pha_files = [alphas[f.stem] for f in self.fgr_files]
        self.backgrounds = backgrounds
        self.size, self.seq_length = size, seq_length
        self.transform = transform if transform is not None else MotionAugmentation.imagematte(size)

    def __len__(self):
        return max(len(self.fgr_files), len(self.backgrounds))

    def __getitem__(self, item):
        index = item % len(self.fgr_files)
        fgr = read_rgb(self.fgr_files[index], self.size)  # [3,H,W]
        pha = read_mask(self.pha_files[index], self.size)  # [1,H,W]
        fgrs = fgr.unsqueeze(0).expand(self.seq_length, -1, -1, -1).clone()  # [T,3,H,W]
        phas = pha.unsqueeze(0).expand(self.seq_length, -1, -1, -1).clone()  # [T,1,H,W]
        return self.transform(fgrs, phas, self.backgrounds.sample(self.seq_length))
