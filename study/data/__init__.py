"""Datasets as in-memory uint8 splits (`bundle`), batching and device-side augmentation (`batches`), readers of
local datasets (`readers`, `cub`, `voc`, `streaming`), the embedded generators (`cluttered_digits`, `shapes`), and
the `data.name` dispatch (`registry`).

Each name is re-exported from its leaf module and imported on first use (study.lazy, PEP 562), so
importing one leaf module does not import its siblings; inside `study/`, import the leaf module itself.
"""

from study.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "bundle": ("CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR_DIRS", "CIFAR_FILES", "DataError",
        "Split", "boxes_from_masks", "DataBundle", "stratified_split"),
    "batches": ("iterate_batches", "BatchAugment"),
    "readers": ("load_digits", "load_synthetic", "load_shapes", "load_cifar", "load_imagefolder"),
    "shapes": ("BACKGROUNDS", "CLASSES_SYNTHETIC", "SyntheticShapes"),
    "cluttered_digits": ("CLASSES_DIGITS", "SPLIT_FRACTIONS", "DigitScenes", "Rendered", "clutter_only_images",
        "held_out_class_images", "load_cluttered_digits", "render_split", "split_identities"),
    "cub": ("BoxSplit", "read_cub", "read_image_folder", "read_imagenet_val", "resize_box"),
    "voc": ("Target", "VOC_CLASSES", "DetectionDataError", "voc_dataset"),
    "streaming": ("RESIZE_RATIO", "RRC_SCALE", "RRC_RATIO", "IMAGE_EXTENSIONS", "batch_indices", "iterate_split",
        "random_resized_box", "decode_crop", "auto_workers", "FileSplit", "StreamingBundle", "index_folder",
        "read_manifest", "load_imagefolder_stream"),
    "registry": ("LOADERS", "load_data"),
})
