"""Datasets as in-memory uint8 splits (`bundle`), batching and device-side augmentation (`batches`), readers of
local datasets (`readers`, `cub`, `voc`, `streaming`), the embedded generators (`cluttered_digits`, `shapes`), and
the `data.name` dispatch (`registry`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.data.bundle import (  # noqa: F401
    CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, CIFAR_DIRS, CIFAR_FILES, DataError, Split, boxes_from_masks,
    DataBundle, stratified_split)
from study.data.batches import (  # noqa: F401
    iterate_batches, BatchAugment)
from study.data.readers import (  # noqa: F401
    load_digits, load_synthetic, load_shapes, load_cifar, load_imagefolder)
from study.data.shapes import (  # noqa: F401
    BACKGROUNDS, CLASSES_SYNTHETIC, SyntheticShapes)
from study.data.cluttered_digits import (  # noqa: F401
    CLASSES_DIGITS, SPLIT_FRACTIONS, DigitScenes, Rendered, clutter_only_images, held_out_class_images,
    load_cluttered_digits, render_split, split_identities)
from study.data.cub import (  # noqa: F401
    BoxSplit, read_cub, read_image_folder, read_imagenet_val, resize_box)
from study.data.voc import (  # noqa: F401
    Target, VOC_CLASSES, DetectionDataError, voc_dataset)
from study.data.streaming import (  # noqa: F401
    RESIZE_RATIO, RRC_SCALE, RRC_RATIO, IMAGE_EXTENSIONS, batch_indices, iterate_split, random_resized_box,
    decode_crop, auto_workers, FileSplit, StreamingBundle, index_folder, read_manifest, load_imagefolder_stream)
from study.data.registry import (  # noqa: F401
    LOADERS, load_data)
