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

``--default`` (issue 16, point 7) measures instead what the evaluate stage does per model on the embedded default:
the default model (untrained, or ``--checkpoint`` a trained ``best.pt``) with its 6x6 CAM at 24 px on the 5,000
test images, the stage's options (all test images in-distribution, the clutter-only and shapes OOD sets and both
noise sets at ``evaluate.ood_images`` each with the bootstrap interval, robustness curves on
``evaluate.robustness_images``), one torch thread as in a 1-CPU Ray task; then the once-per-stage priors, and the
MaxBoxAccV2 box stage with OpenCV's parallel labelling against the sequential one the code uses.

Measured (``--default``, 2026-12-02, this 2-core machine at load 4-5 with two other jobs running): per model
classification 2.60 s, localization 4.39, occlusion 3.35, in-between 2.39, FGSM 1.70, OOD 4.68: total 19.1 s wall,
16.8 CPU-s (target <= 30 s); the priors once per stage 4.1 s; the box stage sequential 3.1 CPU-s vs parallel 6.2.
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


def bench_default(checkpoint: str | None) -> None:
    import contextlib

    import study.evaluation.wsol as wsol
    from study.checkpoint import load_checkpoint
    from study.config.load import load_config
    from study.data.registry import load_data
    from study.evaluation.inputs import localization_priors, ood_sets

    cfg = load_config(None)
    e = cfg.evaluate
    t0 = time.perf_counter()
    data = load_data(cfg.data)
    sets, kinds = ood_sets(cfg.data, data.image_size, e.ood_images, e.ood_root)
    print(f"default data + OOD sets generated in {time.perf_counter() - t0:.1f} s (once per stage); load: {load()}")
    torch.manual_seed(0)
    model = build_model(cfg.model, data.num_classes).eval()
    if checkpoint:
        model.load_state_dict(load_checkpoint(checkpoint)["model"])
    t = data.test
    start, cpu = time.perf_counter(), time.process_time()
    res = evaluate_model(model, t.images, t.labels, data.mean, data.std, boxes=t.boxes, ood_sets=sets, ood_kinds=kinds,
                         cam_curve_interval=e.cam_curve_interval, loc_sigma=e.loc_sigma, random_cam_images=0,
                         robustness_images=e.robustness_images, fgsm_eps=tuple(e.fgsm_eps), ood_images=e.ood_images,
                         ood_bootstrap=e.ood_bootstrap, prior_sigma=e.prior_sigma, device="cpu")
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\n[default] evaluate_model per model, {len(t)} test images, CAM {res.info['cam_size']}, "
          f"{'trained' if checkpoint else 'untrained'}, 1 thread")
    print(f"{'evaluation':<16}{'seconds':>10}")
    for k, v in res.seconds.items():
        print(f"{k:<16}{v:>10.2f}")
    print(f"{'total':<16}{total:>10.2f}   (target <= 30 s)   load now: {load()}")
    # CPU seconds of this one-thread process: what the wall time is on an otherwise idle core (the machine is shared).
    print(f"{'total CPU-s':<16}{cpu:>10.2f}")
    t0, cpu = time.perf_counter(), time.process_time()
    pri = localization_priors(t.boxes, data.image_size, tuple(res.info["cam_size"]), e)
    print(f"priors once per stage: {time.perf_counter() - t0:.2f} s, {time.process_time() - cpu:.2f} CPU-s (centre "
          f"{pri['centre_prior']['maxboxacc_v2']:.2f}, "
          f"random CAM {pri['random_cam']['maxboxacc_v2']:.2f}; the model {res.metrics['maxboxacc_v2']:.2f})")
    cams, _ = class_activation_maps(model, t.images, t.labels, data.mean, data.std)
    maps = scoremaps(cams, (data.image_size,) * 2)
    times = {}
    for name, ctx in (("sequential", wsol._sequential_opencv), ("parallel", contextlib.nullcontext)):
        saved, wsol._sequential_opencv = wsol._sequential_opencv, ctx
        try:
            t0 = time.process_time()
            max_box_acc(maps, t.boxes, cam_curve_interval=e.cam_curve_interval)
            times[name] = time.process_time() - t0
        finally:
            wsol._sequential_opencv = saved
    print(f"MaxBoxAccV2 box stage on {len(t)} maps at interval {e.cam_curve_interval:g}: sequential OpenCV "
          f"{times['sequential']:.2f} CPU-s, parallel (cv2 threads {wsol.cv2.getNumThreads()}) "
          f"{times['parallel']:.2f} CPU-s: "
          f"{times['parallel'] / times['sequential']:.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--intervals", default="0.01,0.001")
    p.add_argument("--robustness-images", type=int, default=2000)
    p.add_argument("--reference-images", type=int, default=100)
    p.add_argument("--default", action="store_true", help="the evaluate stage's per-model cost on the default")
    p.add_argument("--checkpoint", default=None, help="with --default: a trained best.pt of the default model")
    a = p.parse_args()
    if a.default:
        torch.set_num_threads(1)
        bench_default(a.checkpoint)
        return
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
