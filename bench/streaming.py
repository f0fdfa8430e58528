"""Streaming input mechanisms at ImageNet resolution, side by side: images/s from JPEG files to uint8 crops.

Usage: ``python bench/streaming.py [--images 384] [--size 224] [--workers 0 1 2] [--no-ray] [--folder DIR]``

Generates ``--images`` JPEGs of ImageNet-like sizes (shorter side 300-500 px, quality 90, in 8 class folders;
smooth noise, which decodes like photographs) unless ``--folder`` names an existing ``train/<class>/*`` tree, then
times one epoch of each mechanism, all producing uint8 ``[B, 3, S, S]`` batches and int64 labels (batch 64):

- ``stream``: ``study.data.streaming.FileSplit`` (DataLoader workers, ``torchvision.io.decode_image`` +
RandomResizedCrop),
  for each ``--workers`` count: what the engine runs with ``data.streaming: true``;
- ``pil``: the classic loader, ``torchvision.datasets.ImageFolder`` (PIL decode) + ``transforms.v2``
  RandomResizedCrop, with the largest worker count: the reference point;
- ``ray-data``: ``ray.data.read_images(..., size=(S, S), mode="RGB")`` (PIL decode + resize in Ray tasks) with the
  class from the directory (``Partitioning("dir")``) and ``iter_torch_batches``, on a local Ray with as many CPUs as
  the largest worker count; Ray's start-up is excluded, its per-epoch planning is not;
- ``gpu-nvjpeg``: ``torchvision.io.decode_jpeg(list, device="cuda")`` (batched nvJPEG) + resized crops on the GPU,
  only where CUDA is available (``bench/gpu.py`` runs it on a lent GPU); the files are still read on the CPU.

Each line: images/s of the epoch (worker start-up included, as the engine pays it every epoch) and per CPU process.
On this 2-core machine shared with other jobs, treat differences under ~20 % as noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.data.streaming import FileSplit, index_folder, iterate_split  # noqa: E402

BATCH = 64


def make_jpegs(root: Path, n: int, classes: int = 8, seed: int = 0) -> Path:
    """root/train/<class>/<i>.jpg, n images of 300-500 px shorter side and 4:3-ish aspect."""
    from torchvision.io import encode_jpeg, write_file

    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        short = int(torch.randint(300, 501, (1,), generator=g))
        long = int(short * (1.0 + 0.5 * float(torch.rand(1, generator=g))))
        h, w = (short, long) if i % 3 else (long, short)
        coarse = torch.rand(1, 3, 12, 12, generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
        img = (img * 200 + 20 + torch.randn(3, h, w, generator=g) * 6).clamp(0, 255).to(torch.uint8)
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_file(str(folder / f"{i:06d}.JPEG"), encode_jpeg(img, quality=90))
    return root


def timed(batches) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for x, _ in batches:
        n += int(x.shape[0])
    return time.perf_counter() - start, n


def bench_stream(folder: Path, size: int, workers: int) -> tuple[float, int]:
    paths, names, classes = index_folder(folder / "train")
    labels = torch.as_tensor(np.searchsorted(np.array(classes), names), dtype=torch.long)
    split = FileSplit(paths, labels, size, True, workers)
    return timed(iterate_split(split, BATCH, shuffle=True, seed=0))


def bench_pil(folder: Path, size: int, workers: int) -> tuple[float, int]:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True)])
    ds = ImageFolder(str(folder / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
    return timed(loader)


def bench_ray_data(folder: Path, size: int, cpus: int) -> tuple[float, int] | str:
    try:
        import ray
        from ray.data.datasource.partitioning import Partitioning
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        return f"unavailable ({exc})"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=True, logging_level="ERROR")
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        classes = sorted(p.name for p in (folder / "train").iterdir())
        to_idx = {c: i for i, c in enumerate(classes)}

        def label(batch: dict) -> dict:
            batch["label"] = np.array([to_idx[c] for c in batch["class"]], dtype=np.int64)
            del batch["class"]
            return batch

        train = str(folder / "train")
        ds = ray.data.read_images(train, size=(size, size), mode="RGB",
                                  partitioning=Partitioning("dir", field_names=["class"], base_dir=train))
        ds = ds.map_batches(label, batch_format="numpy")

        def batches():
            for b in ds.iter_torch_batches(batch_size=BATCH, dtypes={"image": torch.uint8, "label": torch.int64}):
                yield b["image"].permute(0, 3, 1, 2), b["label"]  # NHWC -> NCHW, as the engine expects

        return timed(batches())
    except Exception as exc:  # report, don't hide the other figures
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        ray.shutdown()


def bench_gpu_decode(folder: Path, size: int) -> tuple[float, int] | str:
    if not torch.cuda.is_available():
        return "unmeasurable here (no CUDA device); bench/gpu.py runs it on a lent GPU"
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as TF

    from study.data.streaming import random_resized_box

    paths = [p.decode() for p in index_folder(folder / "train")[0]]
    g = torch.Generator().manual_seed(0)

    def batches():
        for start in range(0, len(paths), BATCH):
            data = [read_file(p) for p in paths[start:start + BATCH]]
            imgs = decode_jpeg(data, device="cuda")
            crops = []
            for img in imgs:  # per image: sizes differ until cropped (nvJPEG returns a list)
                top, left, h, w = random_resized_box(img.shape[-2], img.shape[-1], g)
                crops.append(TF.resized_crop(img, top, left, h, w, [size, size], antialias=True))
            yield torch.stack(crops), None
        torch.cuda.synchronize()

    timed(batches())  # warm-up: nvJPEG handles and CUDA kernels
    return timed(batches())


def report(name: str, procs: int, res: tuple[float, int] | str) -> float:
    if isinstance(res, str):
        print(f"{name:<12} {procs:>5}  {res}")
        return float("nan")
    secs, n = res
    rate = n / secs
    print(f"{name:<12} {procs:>5}  {rate:10.0f} img/s  {rate / max(procs, 1):8.0f} img/s per process  ({n} images, "
          f"{secs:.2f} s)")
    return rate


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--folder", type=Path, default=None, help="an existing root with train/<class>/*")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-gpu", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or make_jpegs(Path(tmp), args.images)
        n = len(index_folder(folder / "train")[0])
        print(f"{n} JPEGs under {folder}/train -> uint8 [{BATCH}, 3, {args.size}, {args.size}]; "
              f"{os.cpu_count()} CPUs visible, torch {torch.__version__}")
        print(f"{'mechanism':<12} {'procs':>5}  throughput")
        rates = {}
        for w in args.workers:
            rates[f"stream{w}"] = report(f"stream/{w}w", max(w, 1), bench_stream(folder, args.size, w))
        top = max(max(args.workers), 1)
        rates["pil"] = report("pil", top, bench_pil(folder, args.size, top))
        if not args.no_ray:
            rates["ray"] = report("ray-data", top, bench_ray_data(folder, args.size, top))
        if not args.no_gpu:
            report("gpu-nvjpeg", 1, bench_gpu_decode(folder, args.size))
        best = rates[f"stream{max(args.workers)}"]
        others = ", ".join(f"{k} {best / v:.2f}x" for k, v in rates.items() if k in ("pil", "ray") and v == v)
        print(f"stream with {max(args.workers)} workers vs: {others}")


if __name__ == "__main__":
    main()
