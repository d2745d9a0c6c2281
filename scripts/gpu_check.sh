#!/usr/bin/env bash
# The GPU figures issue 14 asks for, in one short run (lent GPU time is scarce; about 5 minutes):
# ViT-B/16 at 224 px in bf16, 2 × 128 images per LPT phase-2 step (256 per step), forward batch 256:
# the matmul peak, images/s, achieved GFLOP/s and its share of the peak (MFU), compiled vs eager blocks, and the
# same step fed by the harness's image-by-image data path from a JPEG folder with 8 loader workers (data-wait
# share). Needs the project installed (pip install -e .) with a CUDA torch; downloads nothing: the backbone is
# randomly initialised (weights do not change the timing) and the JPEG folder is generated here.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # prints the tables and writes OUT_DIR/gpu_check.txt
set -euo pipefail
out=${1:-${OUT:-gpu_check}}
mkdir -p "$out"
python - "$out/jpegs" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for split, per_class in (("train", 160), ("test", 4)):
    for label in range(8):
        folder = root / split / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:04d}.jpg", quality=90)
print(f"wrote {root}: 8 classes, 1,280 training JPEGs of 320×256")
EOF
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/gpu_check.txt"
python scripts/lpt_speed.py --backbone vit_base_patch16_224.augreg_in21k --device cuda --amp bf16 \
    --image-size 224 --batch-size 128 --forward-batch 256 --classes 1000 --steps 10 --warmup 3 --compile \
    --data-root "$out/jpegs" --dataset folder --workers 8 2>&1 | tee -a "$out/gpu_check.txt"
# Issue 18: a data-parallel run through torchrun (--nproc) against the plain run on the same GPU(s): LPT, both
# phases one epoch each, on the generated JPEGs; images/s from each run's per-epoch times (2 × batch images a step).
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
batch=128
for mode in plain "nproc $gpus"; do
    extra=(); [ "$mode" != plain ] && extra=(--nproc "$gpus")
    bench run --method lpt --dataset folder --data-root "$out/jpegs" --backbone vit_base_patch16_224.augreg_in21k \
        --random-init --set amp=bf16 --set image_size=224 --set batch_size=$batch --set phase1_epochs=1 \
        --set phase2_epochs=1 --out "$out/ddp-${mode// /}" "${extra[@]}" > "$out/ddp-${mode// /}.log" 2>&1
    python - "$out/ddp-${mode// /}" "$mode" "$batch" <<'PY' | tee -a "$out/gpu_check.txt"
import json, sys
from pathlib import Path
(record,) = [json.loads(p.read_text()) for p in Path(sys.argv[1], "records").glob("*.json")]
metrics = json.loads(Path(record["run_dir"], "metrics.json").read_text())
batch = int(sys.argv[3])
steps = record["train_size"] // batch + 1
for entry in metrics["history"]:
    print(f"{sys.argv[2]:>8} (world {record['world']['size']}): {entry['phase']} {steps * 2 * batch / entry['seconds']:.0f} "
          f"images/s ({entry['seconds']:.1f} s an epoch, {entry['data_wait_share']:.0%} waiting for data)")
PY
done
