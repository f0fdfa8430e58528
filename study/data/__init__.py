"""Datasets as in-memory uint8 splits (`bundle`), batching and device-side augmentation (`batches`), readers of
local datasets (`readers`, `cub`, `voc`, `streaming`), the embedded generators (`cluttered_digits`, `shapes`), and
the `data.name` dispatch (`registry`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.data.batches import (  # noqa: F401
    BatchAugment, iterate_batches)
from study.data.bundle import (  # noqa: F401
    CIFAR_DIRS, CIFAR_FILES, CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, DataBundle, DataError, Split,
    boxes_from_masks, stratified_split)
from study.data.cluttered_digits import (  # noqa: F401
    CLASSES_DIGITS, SPLIT_FRACTIONS, DigitScenes, Rendered, load_cluttered_digits, render_split, split_identities)
from study.data.cub import (  # noqa: F401
    BoxSplit, read_cub, read_image_folder, read_imagenet_val, resize_box)
from study.data.readers import (  # noqa: F401
    load_cifar, load_digits, load_imagefolder, load_shapes, load_synthetic)
from study.data.registry import (  # noqa: F401
    LOADERS, load_data)
from study.data.shapes import (  # noqa: F401
    BACKGROUNDS, CLASSES_SYNTHETIC, SyntheticShapes)
from study.data.streaming import (  # noqa: F401
    IMAGE_EXTENSIONS, RESIZE_RATIO, RRC_RATIO, RRC_SCALE, FileSplit, StreamingBundle, auto_workers, batch_indices,
    decode_crop, index_folder, iterate_split, load_imagefolder_stream, random_resized_box, read_manifest)
from study.data.voc import (  # noqa: F401
    VOC_CLASSES, DetectionDataError, Target, voc_dataset)
