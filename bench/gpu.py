"""Is the data path ever the bottleneck? images/s of augmentation alone vs the model step vs the engine's trial step.

Usage: ``python bench/gpu.py [--quick] [--archs resnet18_cifar pyramidnet110] [--batch 128] [--no-compile]``

One command for a lent H100/H200 (about 4-6 minutes, most of it ``torch.compile``); on a machine without CUDA it runs
automatically in ``--quick`` mode (tiny batches and step counts, no compile) so the script itself is checked anywhere.
Every figure is images/s after warm-up, with ``torch.cuda.synchronize()`` around the timed loop:

1. ``data``: the data path alone on device-resident CIFAR-size uint8 batches (100 classes, 32x32): a shuffled gather,
   ``study.data.BatchAugment`` (pad-4 random crop, flip, normalise), ``study.augment.CutMix`` (batch mode, p=1),
   channels_last. The same code the engine runs per batch; only the host->device copy of the uint8 batch is left out.
2. ``model``: one SGD step (Nesterov, soft-target cross-entropy) on a fixed batch, bf16 autocast, channels_last,
   eager and ``torch.compile``-d.
3. ``trial``: ``study.training.engine.Trainer.train_one_epoch`` on an in-memory synthetic CIFAR-100-size set: the
data path
   (with its host->device copies) and the model step together, as a study trial runs them; eager, and compiled
   through the engine's ``wrapped`` hook.
4. ``stream``: ``study.data.streaming`` at 224x224 from generated ImageNet-size JPEGs (DataLoader workers, CPU decode),
   the batched nvJPEG GPU decode for comparison, and a ResNet-50 bf16 step at 224 for scale.

Then the ratio data/model per architecture; the target is >= 3 (the data path never limits a trial).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.augment import CutMix, soft_target_cross_entropy  # noqa: E402
from study.config.load import load_config
from study.config.schema import ModelConfig  # noqa: E402
from study.data.batches import BatchAugment
from study.data.bundle import CIFAR_MEAN, CIFAR_STD, DataBundle, Split  # noqa: E402
from study.models import build_model  # noqa: E402

CLASSES = 100
TARGET = 3.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], int], device: torch.device, warmup: int, steps: int) -> float:
    """images/s of `fn` (which returns the images it processed) over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        n += fn()
    sync(device)
    return n / (time.perf_counter() - start)


def data_path(device: torch.device, batch: int, warmup: int, steps: int, pool: int) -> float:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (pool, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, CLASSES, (pool,), generator=g).to(device)
    augment = BatchAugment(CIFAR_MEAN["cifar100"], CIFAR_STD["cifar100"], pad=4, hflip=True, train=True)
    mixer = CutMix(alpha=1.0, prob=1.0, mode="batch", num_classes=CLASSES)
    order = torch.randperm(pool, device=device)
    state = {"at": 0}

    def step() -> int:
        at = state["at"] if state["at"] + batch <= pool else 0
        idx = order[at:at + batch]
        state["at"] = at + batch
        x = augment(images[idx], g)
        x, targets = mixer(x, labels[idx], generator=g)
        x = x.contiguous(memory_format=torch.channels_last)
        return int(x.shape[0])

    return rate(step, device, warmup, steps)


def model_step(arch: str, device: torch.device, batch: int, size: int, warmup: int, steps: int,
               compiled: bool) -> tuple[float, float]:
    """(images/s, compile seconds) of one SGD step of `arch` on a fixed batch."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch), CLASSES, 3).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.softmax(torch.randn(batch, CLASSES, device=device), dim=1)
    forward = torch.compile(model) if compiled else model
    amp = device.type == "cuda"

    def step() -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(x)
        loss = soft_target_cross_entropy(logits.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch

    start = time.perf_counter()
    step()  # compiles when `compiled`
    sync(device)
    compile_s = time.perf_counter() - start if compiled else 0.0
    return rate(step, device, warmup, steps), compile_s


def trial_step(arch: str, device: torch.device, batch: int, steps: int, compiled: bool) -> float:
    """images/s of the engine's own epoch loop (host-resident uint8 set, per-batch copy, augment, CutMix, step)."""
    from study.training.engine import Trainer

    n = batch * steps
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, CLASSES, (n,), generator=g))
    small = Split(split.images[:batch], split.labels[:batch])
    data = DataBundle("bench", split, small, small, CLASSES, CIFAR_MEAN["cifar100"], CIFAR_STD["cifar100"],
                      tuple(str(i) for i in range(CLASSES)))
    cfg = load_config(None, [f"model.arch={arch}", f"train.batch_size={batch}", "cutmix.prob=1.0", "train.amp=true",
                             "train.channels_last=true", f"train.device={device}", "data.pad=4", "data.hflip=true"])
    trainer = Trainer(cfg, data, device)
    if compiled:
        trainer.wrapped = torch.compile(trainer.model)
    trainer.train_one_epoch(0)  # warm-up (and compile)
    sync(device)
    start = time.perf_counter()
    trainer.train_one_epoch(1)
    sync(device)
    return n / (time.perf_counter() - start)


def stream_figures(device: torch.device, quick: bool) -> list[tuple[str, float | str]]:
    from bench.streaming import BATCH, bench_gpu_decode, bench_stream, make_jpegs

    size, images = (64, 32) if quick else (224, 768)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = 0 if quick else max(1, min(16, cpus))
    out: list[tuple[str, float | str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_jpegs(Path(tmp), images)
        bench_stream(folder, size, workers)  # page cache warm, like a second epoch
        secs, n = bench_stream(folder, size, workers)
        out.append((f"stream {size}px, {workers} decode workers (CPU)", n / secs))
        gpu = bench_gpu_decode(folder, size)
        out.append((f"stream {size}px, nvJPEG batch decode on the GPU", gpu if isinstance(gpu, str) else
                    gpu[1] / gpu[0]))
    r50, _ = model_step("resnet50", device, BATCH if not quick else 4, size, 1 if quick else 5, 2 if quick else 20,
                        False)
    out.append((f"resnet50 {size}px model step (eager, for scale)", r50))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (automatic without CUDA)")
    ap.add_argument("--archs", nargs="+", default=["resnet18_cifar", "pyramidnet110"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-stream", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type != "cuda"
    batch = 8 if quick else args.batch
    warm, steps = (1, 2) if quick else (10, 50)
    compiled = not args.no_compile and not quick
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        name = f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; batch {batch}; {'quick' if quick else 'full'} mode; "
          f"bf16 autocast {'on' if device.type == 'cuda' else 'off (CPU)'}; channels_last")
    t0 = time.perf_counter()
    data = data_path(device, batch, 5 if not quick else 1, 200 if not quick else 3, 50_000 if not quick else 256)
    print(f"{'data path (crop, flip, normalise, CutMix)':<52} {data:12,.1f} img/s")
    ratios = []
    budget_s = 240.0  # compiled runs start only before this, so a full run stays under 8 minutes on one GPU
    for arch in args.archs:
        eager, _ = model_step(arch, device, batch, 32, warm, steps, False)
        print(f"{arch + ' model step, eager':<52} {eager:12,.1f} img/s")
        best = eager
        if compiled and time.perf_counter() - t0 > budget_s:
            print(f"{arch + ' compiled runs':<52} skipped: {budget_s:.0f} s budget spent")
        elif compiled:
            comp, secs = model_step(arch, device, batch, 32, warm, steps, True)
            print(f"{arch + ' model step, torch.compile':<52} {comp:12,.1f} img/s   (compile {secs:.0f} s)")
            best = max(best, comp)
        trial = trial_step(arch, device, batch, steps, False)
        print(f"{arch + ' trial step (engine), eager':<52} {trial:12,.1f} img/s")
        if compiled and time.perf_counter() - t0 <= budget_s:
            trial_c = trial_step(arch, device, batch, steps, True)
            print(f"{arch + ' trial step (engine), torch.compile':<52} {trial_c:12,.1f} img/s")
        ratios.append((arch, data / best))
    if not args.no_stream:
        for label, value in stream_figures(device, quick):
            shown = f"{value:12,.1f} img/s" if isinstance(value, float) else f"  {value}"
            print(f"{label:<52} {shown}")
    for arch, r in ratios:
        verdict = "ok" if r >= TARGET else "BELOW TARGET"
        print(f"data path / {arch} fastest model step: {r:6.1f}x   (target >= {TARGET:g}x: {verdict})")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
