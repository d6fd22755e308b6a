"""Timings on an accelerator (what benchmarks/gpu.sh runs), each against plain inference on the same card:

- plain inference, images/s (ResNet-56, the 10k JPEG test set);
- the single-unit lesion sweep of a ResNet-110 over the 10k test set (issue 16 target: < 10 s on one H100/H200;
  random init: the time does not depend on the weights);
- the identity study and the path-length study of ResNet-56;
- a ViT (the zoo's, else a random timm ViT): inference, single-unit lesions and identity;
- bfloat16 against float32: how many of ResNet-56's predictions change.

    python benchmarks/gpu_timings.py --device cuda
    python benchmarks/gpu_timings.py --device cpu --limit 512      # a dry run of the same script
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from resprobe.engine import RunSpec, predict
from resprobe.loading import load_data, load_model
from resprobe.probes import identity, lesion, paths
from resprobe.study import Subject

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1024)
    args = ap.parse_args()
    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    if dev.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    data = load_data(f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}", "test", limit=args.limit)
    spec = RunSpec(batch_size=args.batch_size, device=dev, progress=False, n_boot=200)
    out = dict(device=torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu", images=len(data),
               torch=torch.__version__)
    m56, _ = load_model("cifar_resnet56", str(SHARED / "models/resnet56-4bfd9763.th"))
    s56 = Subject("resnet56", m56.to(dev), "imagenet")
    predict(m56, data.subset(min(len(data), 2048)), spec, "imagenet")  # warm-up (cuDNN autotuning, data on device)
    p32, t = timed(lambda: predict(m56, data, spec, "imagenet"), sync)
    out["resnet56_inference"] = dict(seconds=t, images_per_s=len(data) / t)
    pbf, t = timed(lambda: predict(m56, data, spec.replace(dtype="bfloat16"), "imagenet"), sync)
    out["resnet56_bfloat16"] = dict(seconds=t, predictions_changed=int((p32.pred != pbf.pred).sum()),
                                    wrong_fp32=int(p32.wrong.sum()), wrong_bf16=int(pbf.wrong.sum()))
    m110, _ = load_model("cifar_resnet110", num_classes=10)
    s110 = Subject("resnet110", m110.to(dev), "imagenet")
    lesion.run([s110], data.subset(min(len(data), 1024)), spec, lesion.LesionPlan("single"))  # warm-up
    r, t = timed(lambda: lesion.run([s110], data, spec, lesion.LesionPlan("single")), sync)
    out["resnet110_single_lesions"] = dict(seconds=t, configurations=len(r.table), target_s=10)
    _, t = timed(lambda: identity.run([s56], data, spec), sync)
    out["resnet56_identity"] = dict(seconds=t, ratio_to_inference=t / out["resnet56_inference"]["seconds"])
    sub = data.subset(min(len(data), 512))
    _, t = timed(lambda: paths.run([s56], sub, spec.replace(batch_size=128), paths.PathsOptions(samples=20)), sync)
    out["resnet56_paths_512_images"] = dict(seconds=t)
    vit_w = ROOT / "zoo" / "cifar_vit6" / "model.pt"
    vit_spec = "timm:vit_tiny_patch16_224(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2)"
    mv, _ = load_model(vit_spec, str(vit_w) if vit_w.is_file() else None, num_classes=10)
    sv = Subject("vit", mv.to(dev), "imagenet")
    _, t_inf = timed(lambda: predict(mv, data, spec, "imagenet"), sync)
    _, t_les = timed(lambda: lesion.run([sv], data, spec, lesion.LesionPlan("single")), sync)
    _, t_id = timed(lambda: identity.run([sv], data, spec), sync)
    out["vit"] = dict(weights=str(vit_w) if vit_w.is_file() else "random init", inference_s=t_inf,
                      images_per_s=len(data) / t_inf, single_lesions_s=t_les, identity_s=t_id)
    print(json.dumps(out, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)))


if __name__ == "__main__":
    main()
