"""Cost of one CutMix call, side by side with the public implementations, and its share of a training step.

Usage: ``python bench/cutmix_op.py [--threads 1] [--repeats 300] [--no-large] [--step-repeats 3] [--no-step]``

Compared on the same tensors in one run, with interleaved repeats (every round calls each method once, so
drifting load from other processes hits all of them alike), median microseconds per batch:

- ``clone``: ``images.clone()``, the floor for any out-of-place op.
- ours: ``study.augment.CutMix`` with prob=1, batch and sample modes, soft targets included.
- torchvision: ``torchvision.transforms.v2.CutMix(num_classes=10)`` called on ``(images, labels)``.
- timm: ``timm.data.Mixup(mixup_alpha=0, cutmix_alpha=1, prob=1, switch_prob=0)`` in ``batch`` and ``elem``
  modes. timm mixes in place, so the timed call clones first: every method then does the same work (leave the
  input intact and return a new batch).
- official: the slice copy of clovaai/CutMix-PyTorch ``train.py`` (Beta draw, ``randperm``, ``rand_bbox`` and
  ``x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]``), on a clone for the same reason; it builds no targets.

Single calls of a few hundred microseconds are noisy on a shared machine: besides the load of other processes,
glibc may hand freed blocks back to the OS and page-fault them in again, depending on the process's allocation
history. The target checks therefore use the median of per-round ratios (the two calls of a round ran within a
millisecond of each other). ``MALLOC_TRIM_THRESHOLD_=4294967296`` in the environment removes the allocator part.

Then: the dispatched torch ops per call of our CutMix at B=8 and B=128 (equal when no work scales with B in
Python), and a ResNet-18-CIFAR SGD step at B=128 with and without CutMix.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.augment import CutMix, soft_target_cross_entropy  # noqa: E402

NUM_CLASSES = 10


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that reach the dispatcher below autograd (what actually runs kernels)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def official_cutmix(x: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, float, torch.Tensor]:
    """clovaai/CutMix-PyTorch train.py, the mixing lines, on a clone (the original writes into the batch)."""
    # The legacy global NumPy RNG on purpose: it is what the official code (and timm) call.
    x = x.clone()
    lam = np.random.beta(alpha, alpha)  # noqa: NPY002
    perm = torch.randperm(x.shape[0], device=x.device)
    height, width = x.shape[2], x.shape[3]
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = np.random.randint(height), np.random.randint(width)  # noqa: NPY002
    y1, y2 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    x1, x2 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1 - ((y2 - y1) * (x2 - x1) / (height * width))
    return x, lam, perm


def make_methods(images: torch.Tensor, labels: torch.Tensor) -> dict[str, Callable[[], object]]:
    methods: dict[str, Callable[[], object]] = {"clone": images.clone}
    ours_batch = CutMix(1.0, 1.0, "batch", num_classes=NUM_CLASSES)
    ours_sample = CutMix(1.0, 1.0, "sample", num_classes=NUM_CLASSES)
    methods["ours CutMix batch"] = lambda: ours_batch(images, labels)
    methods["ours CutMix sample"] = lambda: ours_sample(images, labels)
    try:
        from torchvision.transforms import v2

        tv = v2.CutMix(num_classes=NUM_CLASSES, alpha=1.0)
        methods["torchvision v2 CutMix"] = lambda: tv(images, labels)
    except ImportError:
        print("torchvision not installed: skipped")
    try:
        from timm.data import Mixup

        common = dict(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.0, label_smoothing=0.0,
                      num_classes=NUM_CLASSES)
        timm_batch = Mixup(mode="batch", **common)
        timm_elem = Mixup(mode="elem", **common)
        methods["timm Mixup batch (+clone)"] = lambda: timm_batch(images.clone(), labels)
        methods["timm Mixup elem (+clone)"] = lambda: timm_elem(images.clone(), labels)
    except ImportError:
        print("timm not installed: skipped")
    methods["official slice copy (+clone)"] = lambda: official_cutmix(images)
    return methods


def time_methods(methods: dict[str, Callable[[], object]], repeats: int,
                 device: torch.device) -> dict[str, np.ndarray]:
    """Seconds per call, one entry per round, rounds interleaved. Results are dropped at once, as a training loop
    would drop the previous batch."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    cuda = device.type == "cuda"
    for fn in methods.values():  # warm-up: first-call allocations and lazy imports stay out of the numbers
        fn()
    order = list(methods)
    shuffler = np.random.default_rng(0)
    for _ in range(repeats):
        # A fresh order every round: each method follows every other one about equally often, so the caches it
        # finds (warm after a clone, cold after timm's per-sample loop) do not favour anyone.
        for name in shuffler.permutation(order):
            fn = methods[name]
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                end.record()
                torch.cuda.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - t0)
            del out
    return {k: np.array(v) for k, v in times.items()}


def print_table(title: str, times: dict[str, np.ndarray]) -> None:
    med = {k: float(np.median(v)) for k, v in times.items()}
    ours, clone = med["ours CutMix batch"], med["clone"]
    print(f"\n{title}")
    print(f"{'method':32s} {'median us':>11s} {'/ ours batch':>13s} {'/ clone':>9s}")
    for name, t in med.items():
        print(f"{name:32s} {t * 1e6:11.1f} {t / ours:12.2f}x {t / clone:8.2f}x")


def paired(times: dict[str, np.ndarray], a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b): the two calls of a round ran within a millisecond of each other,
    so load that drifts over seconds (other processes on a shared machine) cancels out."""
    return float(np.median(times[a] / times[b]))


def check_targets(times: dict[str, np.ndarray], large: bool) -> None:
    """The speed targets of the design, judged on this run's paired per-round ratios."""
    ours, sample = "ours CutMix batch", "ours CutMix sample"
    checks: list[tuple[str, float, bool]] = []
    if large:
        r = paired(times, ours, "clone")
        checks.append(("batch mode within 1.2x of clone", r, r <= 1.2))
    else:
        if "torchvision v2 CutMix" in times:
            r = paired(times, "torchvision v2 CutMix", ours)
            checks.append(("batch >= 2x faster than torchvision v2", r, r >= 2))
            r = paired(times, "torchvision v2 CutMix", sample)
            checks.append(("sample no slower than torchvision v2", r, r >= 1))
        if "timm Mixup batch (+clone)" in times:
            r = paired(times, "timm Mixup batch (+clone)", ours)
            checks.append(("batch faster than timm batch", r, r > 1))
            r = paired(times, "timm Mixup elem (+clone)", sample)
            checks.append(("sample >= 5x faster than timm elem", r, r >= 5))
        r = paired(times, "official slice copy (+clone)", ours)
        checks.append(("batch faster than official slice copy", r, r > 1))
    print("  targets, as the median per-round ratio (slower / faster):")
    for text, ratio, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}: {ratio:.2f}x")


def count_ops(device: torch.device) -> None:
    print("\nDispatched torch ops per call (prob=1, 3x32x32):")
    for mode in ("batch", "sample"):
        counts = []
        for batch in (8, 128):
            images = torch.rand(batch, 3, 32, 32, device=device)
            labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
            mixer = CutMix(1.0, 1.0, mode, num_classes=NUM_CLASSES)
            mixer(images, labels)  # first-call work (lazy init) is not per-call work
            with OpCounter() as counter:
                mixer(images, labels, torch.Generator().manual_seed(0))
            counts.append(sum(counter.ops.values()))
        same = "equal" if counts[0] == counts[1] else "DIFFERENT"
        print(f"  {mode:6s}: B=8 -> {counts[0]} ops, B=128 -> {counts[1]} ops ({same})")


def build_resnet18_cifar(device: torch.device) -> tuple[torch.nn.Module, str]:
    try:
        from study.config.schema import ModelConfig
        from study.models import build_model

        return build_model(ModelConfig(arch="resnet18_cifar"), num_classes=NUM_CLASSES).to(device), "study.models"
    except (ImportError, AttributeError, ValueError) as exc:
        import torchvision

        model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # CIFAR stem: 3x3 stride 1, no max-pool
        model.maxpool = torch.nn.Identity()
        return model.to(device), f"inline torchvision resnet18 + 3x3 stem (study.models unavailable: {exc})"


def step_cost(device: torch.device, repeats: int, op_median: float) -> None:
    model, source = build_resnet18_cifar(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.rand(128, 3, 32, 32, device=device)
    labels = torch.randint(0, NUM_CLASSES, (128,), device=device)
    mixer = CutMix(1.0, 1.0, "batch", num_classes=NUM_CLASSES)
    plain = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()

    def step(mix: bool) -> None:
        x, t = mixer(images, labels) if mix else (images, plain)
        loss = soft_target_cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for mix in (False, True):
            t0 = time.perf_counter()
            step(mix)
            times[mix].append(time.perf_counter() - t0)
    base, with_mix = statistics.median(times[False]), statistics.median(times[True])
    spread = (max(times[False]) - min(times[False])) / base  # run-to-run noise of the plain step
    diff = (with_mix - base) / base
    verdict = "within" if abs(diff) <= spread else "outside"
    print(f"\nResNet-18-CIFAR SGD step, B=128x3x32x32, {repeats} interleaved repeats ({source}):")
    print(f"  step without CutMix {base * 1e3:9.1f} ms   with CutMix {with_mix * 1e3:9.1f} ms   "
          f"difference {100 * diff:+.2f}% ({verdict} the plain step's spread of {100 * spread:.1f}%)")
    if not math.isnan(op_median):
        print(f"  one CutMix call (batch mode, median above) = {100 * op_median / base:.3f}% of a plain step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=300, help="interleaved rounds at 32x32 (default 300)")
    parser.add_argument("--large-repeats", type=int, default=0, help="rounds at 224x224 (default repeats/20, >= 5)")
    parser.add_argument("--no-large", action="store_true", help="skip B=64x3x224x224")
    parser.add_argument("--step-repeats", type=int, default=3, help="training-step repeats (default 3)")
    parser.add_argument("--no-step", action="store_true", help="skip the training-step cost")
    parser.add_argument("--device", default="", help="cpu, cuda (default: cpu, then cuda too when available)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - timm and the official code draw from the legacy global RNG

    versions = [f"torch {torch.__version__}"]
    for name in ("torchvision", "timm"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    print(f"{', '.join(versions)}; numpy {np.__version__}; {torch.get_num_threads()} CPU thread(s)")
    devices = [torch.device(args.device)] if args.device else [torch.device("cpu")]
    if not args.device and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    small_median = math.nan
    for device in devices:
        shapes = [(128, 3, 32, 32)] + ([] if args.no_large else [(64, 3, 224, 224)])
        for shape in shapes:
            large = shape[-1] > 32
            repeats = (args.large_repeats or max(5, args.repeats // 20)) if large else args.repeats
            images = torch.rand(shape, device=device)
            labels = torch.randint(0, NUM_CLASSES, (shape[0],), device=device)
            times = time_methods(make_methods(images, labels), repeats, device)
            threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
            print_table(f"B={'x'.join(map(str, shape))} float32 on {device}{threads}, {repeats} interleaved repeats",
                        times)
            check_targets(times, large)
            if not large and device.type == devices[-1].type:
                small_median = float(np.median(times["ours CutMix batch"]))
        count_ops(device)
    if not args.no_step:
        step_cost(devices[-1], args.step_repeats, small_median)
    return 0


if __name__ == "__main__":
    sys.exit(main())
