"""Generated ImageNet-style image folders for the streaming and distributed tests (JPEGs written with torchvision's
encoder; nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

from study.config.load import load_config

SIZE = 24  # the image size the streaming configs train at


def write_folder(root: Path, n_train: int, n_val: int, classes: int = 4, seed: int = 0) -> Path:
    """root/{train,val}/<class>/<i>.jpg: smooth random colour images of varied sizes (28-60 px) whose mean colour
    depends on the class, written with torchvision's JPEG encoder; one grey PNG per split checks RGB conversion."""
    from torchvision.io import encode_jpeg, encode_png, write_file

    g = torch.Generator().manual_seed(seed)
    for sub, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            c = i % classes
            h, w = (int(v) for v in torch.randint(28, 61, (2,), generator=g))
            base = torch.tensor([c * 60.0, 255.0 - c * 60.0, 128.0]).view(3, 1, 1)
            noise = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bilinear")
            img = (base * 0.6 + noise[0] * 100).clamp(0, 255).to(torch.uint8)
            folder = root / sub / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            write_file(str(folder / f"{i:05d}.jpg"), encode_jpeg(img, quality=90))
        write_file(str(root / sub / "class0" / "grey.png"), encode_png(torch.full((1, 30, 40), 99, dtype=torch.uint8)))
    return root


def stream_cfg(root: Path, *extra: str):
    return load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.streaming=true",
                              f"data.image_size={SIZE}", "data.pad=2", "data.val_fraction=0.2", "model.arch=cnn",
                              "model.width=8", "train.epochs=1", "train.batch_size=16", "train.device=cpu",
                              "train.num_threads=1", *extra])
