"""9-class ImageNet and ImageNet-A (Bahng et al., ReBias, ICML 2020, https://arxiv.org/abs/1910.02806).

ReBias groups ImageNet classes into nine super-classes whose bias is texture. The classes
are given as ranges of the standard ImageNet class index (the position of the WordNet id in
the sorted list of the 1,000 ILSVRC-2012 ids, i.e. the order of an image-folder listing of
the training set). For the three super-classes that overlap ImageNet-A (dog, bird, monkey)
ReBias keeps only five indices of the range (its ``make_dataset``, mode ``"ImageNet"``);
the other six ranges are kept whole: 5 + 5 + 3 + 5 + 5 + 5 + 5 + 4 + 5 = 42 ImageNet classes.
ImageNet-A (Hendrycks et al., CVPR 2021) is read, as in ReBias, through a fixed map of the
42 WordNet ids to the nine labels (its ``CLASS_TO_INDEX``), which needs no class order.

Expected layout: ``<root>/<wnid>/*.JPEG`` (the training set, or a validation set rearranged
into class folders, or ImageNet-A). Texture-cluster labels are not part of the data: the bias
of every record is -1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .dfa import IMAGE_SUFFIXES, ImageList, ImageRecord

__all__ = [
    "IMAGENET9_CLASSES",
    "IMAGENET9_RANGES",
    "IMAGENET9_SUBSETS",
    "IMAGENET_A_CLASS_TO_INDEX",
    "imagenet9_indices",
    "imagenet_class_order",
    "imagenet9_map",
    "read_imagenet9",
]

IMAGENET9_CLASSES = ("dog", "cat", "frog", "turtle", "bird", "monkey", "fish", "crab", "insect")
#: Inclusive ranges of ImageNet class indices per super-class, in the order above.
IMAGENET9_RANGES = ((151, 254), (281, 285), (30, 32), (33, 37), (89, 97), (372, 378), (393, 397), (118, 121), (306, 310))
#: The indices ReBias keeps of the ranges that overlap ImageNet-A (super-class -> indices);
#: every index of the other ranges is kept.
IMAGENET9_SUBSETS = {
    0: (151, 207, 234, 235, 254),  # dog
    4: (89, 90, 94, 96, 97),  # bird
    5: (372, 373, 374, 375, 378),  # monkey
}

_IMAGENET_A_WNIDS = (
    ("n02085620", "n02099601", "n02106550", "n02106662", "n02110958"),  # dog
    ("n02123045", "n02123159", "n02123394", "n02123597", "n02124075"),  # cat
    ("n01641577", "n01644373", "n01644900"),  # frog
    ("n01664065", "n01665541", "n01667114", "n01667778", "n01669191"),  # turtle
    ("n01819313", "n01820546", "n01833805", "n01843383", "n01847000"),  # bird
    ("n02486410", "n02487347", "n02488291", "n02488702", "n02492035"),  # monkey
    ("n02607072", "n02640242", "n02641379", "n02643566", "n02655020"),  # fish
    ("n01978287", "n01978455", "n01980166", "n01981276"),  # crab
    ("n02174001", "n02177972", "n02190166", "n02206856", "n02219486"),  # insect
)
#: ReBias's fixed WordNet id -> super-class map for ImageNet-A (42 ids).
IMAGENET_A_CLASS_TO_INDEX: dict[str, int] = {
    wnid: label for label, wnids in enumerate(_IMAGENET_A_WNIDS) for wnid in wnids
}

_WNID = re.compile(r"^n\d{8}$")


def imagenet_class_order(source: str | os.PathLike) -> list[str]:
    """The 1,000 ImageNet WordNet ids in class-index order.

    Args:
        source: either the ImageNet training folder (its 1,000 ``n????????`` sub-folders,
            sorted), or a text file whose lines start with the WordNet ids in index order
            (``LOC_synset_mapping.txt`` of the Kaggle release, ``synsets.txt`` ...).

    Raises:
        ValueError: fewer or more than 1,000 ids, or malformed ids; the message names the source.
    """
    source = Path(source)
    if source.is_dir():
        wnids = sorted(p.name for p in source.iterdir() if p.is_dir() and _WNID.match(p.name))
    elif source.is_file():
        wnids = [line.split()[0] for line in source.read_text().splitlines() if line.strip()]
        bad = [w for w in wnids if not _WNID.match(w)]
        if bad:
            raise ValueError(f"{source}: malformed WordNet ids {bad[:5]}")
    else:
        raise FileNotFoundError(f"{source}: neither an ImageNet folder nor a synset list")
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError(
            f"{source}: expected the 1,000 distinct ImageNet WordNet ids, found {len(set(wnids))}; "
            "pass the full training folder or a synset list"
        )
    return wnids


def imagenet9_indices() -> dict[int, int]:
    """ImageNet class index -> super-class index (0..8) under ReBias's rule (42 classes)."""
    mapping = {}
    for target, (lo, hi) in enumerate(IMAGENET9_RANGES):
        for index in IMAGENET9_SUBSETS.get(target, range(lo, hi + 1)):
            mapping[index] = target
    return mapping


def imagenet9_map(class_order: list[str]) -> dict[str, int]:
    """WordNet id -> super-class index (0..8) for ReBias's 42 ImageNet classes.

    Args:
        class_order: the 1,000 WordNet ids in class-index order (:func:`imagenet_class_order`).
    """
    return {class_order[index]: target for index, target in imagenet9_indices().items()}


def read_imagenet9(root: str | os.PathLike, class_order: list[str] | None = None) -> ImageList:
    """Images of the nine super-classes under ``root/<wnid>/``.

    Args:
        root: a folder of WordNet-id sub-folders (ImageNet train/val or ImageNet-A).
        class_order: the 1,000 ImageNet ids in index order (:func:`imagenet_class_order`):
            the folders are mapped by ReBias's index rule (:func:`imagenet9_map`). ``None``
            (ImageNet-A): the folders are mapped through ReBias's fixed
            :data:`IMAGENET_A_CLASS_TO_INDEX`.

    Raises:
        FileNotFoundError: ``root`` is missing or holds none of the 9-class folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ImageNet folder not found")
    mapping = IMAGENET_A_CLASS_TO_INDEX if class_order is None else imagenet9_map(class_order)
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name in mapping):
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(path, mapping[folder.name], -1))
    if not records:
        raise FileNotFoundError(f"{root}: no image in any of the {len(mapping)} 9-class WordNet folders")
    return ImageList(records, root)
