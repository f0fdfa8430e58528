"""Cost of each evaluation of ``study.evaluation`` on N 32x32 images with a ResNet-20 (issue 11, point 10).

Usage: ``python bench/evaluation.py [--n 10000] [--threads 2] [--devices cpu,cuda] [--intervals 0.01,0.001]
[--robustness-images 2000] [--reference-images 100]``

Prints, per device, the wall seconds of every evaluation of one ``evaluate_model`` call (its default settings,
robustness curves on the first ``--robustness-images`` images), the MaxBoxAccV2 box stage alone at each threshold
interval (the fast path, then wsolevaluation's per-image ``findContours`` reference on ``--reference-images`` maps,
scaled to N), and ``epoch_metrics`` (top-1 error + MaxBoxAccV2 on 1000 val images, interval 0.05) as a per-epoch
search metric. The model is an untrained ResNet-20 (its CAMs are as structured as a trained one's for timing),
the images uniform noise, the boxes random. The machine's load average is printed: this machine is shared, and a
load above the core count inflates every figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.config.schema import ModelConfig  # noqa: E402
from study.evaluation.suite import epoch_metrics, evaluate_model  # noqa: E402
from study.evaluation.wsol import class_activation_maps, max_box_acc, reference_max_box_acc, scoremaps  # noqa: E402
from study.models import build_model  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1/5/15 min) on {os.cpu_count()} cores"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--intervals", default="0.01,0.001")
    p.add_argument("--robustness-images", type=int, default=2000)
    p.add_argument("--reference-images", type=int, default=100)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(a.n, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (a.n,), generator=g)
    lo = torch.randint(0, 20, (a.n, 2), generator=g)
    boxes = torch.cat([lo, (lo + torch.randint(4, 12, (a.n, 2), generator=g)).clamp(max=31)], dim=1)
    print(f"N={a.n} 32x32 images, ResNet-20, torch threads {a.threads}; load before: {load()}")
    for dev in a.devices.split(","):
        if dev == "cuda" and not torch.cuda.is_available():
            print("\n[cuda] not available: skipped")
            continue
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="resnet20"), 10).to(dev)
        start = time.perf_counter()
        res = evaluate_model(model, images, labels, MEAN, STD, boxes=boxes, robustness_images=a.robustness_images,
                             device=dev)
        total = time.perf_counter() - start
        print(f"\n[{dev}] evaluate_model (defaults, robustness on {min(a.n, a.robustness_images)} images)")
        print(f"{'evaluation':<16}{'seconds':>10}")
        for k, v in res.seconds.items():
            print(f"{k:<16}{v:>10.2f}")
        print(f"{'total':<16}{total:>10.2f}   load now: {load()}")

        cams, _ = class_activation_maps(model, images, labels, MEAN, STD, device=dev)
        maps = scoremaps(cams, (32, 32))
        k = min(a.n, a.reference_images)
        print(f"\n[{dev}] MaxBoxAccV2 box stage alone on {a.n} maps (reference: {k} maps, scaled to {a.n})")
        print(f"{'interval':<10}{'fast s':>10}{'reference s':>14}{'speed-up':>10}{'same curve':>12}")
        for interval in (float(v) for v in a.intervals.split(",")):
            t0 = time.perf_counter()
            max_box_acc(maps, boxes, cam_curve_interval=interval)
            fast = time.perf_counter() - t0
            t0 = time.perf_counter()
            ref = reference_max_box_acc(maps[:k], boxes[:k], cam_curve_interval=interval)
            ref_s = (time.perf_counter() - t0) * a.n / k
            same = ref.curves == max_box_acc(maps[:k], boxes[:k], cam_curve_interval=interval).curves
            print(f"{interval:<10g}{fast:>10.2f}{ref_s:>14.1f}{ref_s / fast:>10.1f}{str(same):>12}")

        t0 = time.perf_counter()
        epoch_metrics(model, images, labels, MEAN, STD, names=["top1_err", "maxboxacc_v2"], boxes=boxes,
                      max_images=1000, device=dev)
        print(f"\n[{dev}] epoch_metrics(top1_err, maxboxacc_v2) on 1000 images: {time.perf_counter() - t0:.2f} s; "
              f"load now: {load()}")


if __name__ == "__main__":
    main()
