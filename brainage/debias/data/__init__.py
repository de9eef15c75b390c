"""Data sets of the debiasing tracks: Biased-MNIST, digit sources, CIFAR, Corrupted-CIFAR10,
bFFHQ, 9-class ImageNet. Everything returns ``uint8 (n, 3, H, W)`` images (or file lists) with
``int64`` target and bias labels."""

from .arrays import ArraySet, load_array_set, save_array_set
from .biased_mnist import PALETTES, colour_counts, make_biased_mnist, split_per_class, validate_digits
from .cifar import load_cifar10, load_cifar100, read_cifar_batch
from .corrupted import PROTOCOLS, assign_corruptions, corrupt_images, make_corrupted, to_rgb32, write_dfa_split
from .dfa import ImageList, ImageRecord, load_images, parse_dfa_name, read_bffhq, read_dfa
from .idx import FASHION_MNIST_DIR, load_bundled_mnist, load_digits_source, load_fashion_mnist, load_mnist_idx, read_idx
from .imagenet9 import (
    IMAGENET9_CLASSES,
    IMAGENET9_RANGES,
    IMAGENET9_SUBSETS,
    IMAGENET_A_CLASS_TO_INDEX,
    imagenet9_indices,
    imagenet9_map,
    imagenet_class_order,
    read_imagenet9,
)

__all__ = [
    "PALETTES",
    "colour_counts",
    "make_biased_mnist",
    "split_per_class",
    "validate_digits",
    "load_cifar10",
    "load_cifar100",
    "read_cifar_batch",
    "PROTOCOLS",
    "assign_corruptions",
    "corrupt_images",
    "make_corrupted",
    "to_rgb32",
    "write_dfa_split",
    "ImageList",
    "ImageRecord",
    "load_images",
    "parse_dfa_name",
    "read_bffhq",
    "read_dfa",
    "FASHION_MNIST_DIR",
    "load_bundled_mnist",
    "load_digits_source",
    "load_fashion_mnist",
    "load_mnist_idx",
    "read_idx",
    "IMAGENET9_CLASSES",
    "IMAGENET9_RANGES",
    "IMAGENET9_SUBSETS",
    "IMAGENET_A_CLASS_TO_INDEX",
    "imagenet9_indices",
    "imagenet9_map",
    "imagenet_class_order",
    "read_imagenet9",
    "ArraySet",
    "load_array_set",
    "save_array_set",
]
