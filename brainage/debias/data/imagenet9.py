"""9-class ImageNet and ImageNet-A (Bahng et al., ReBias, ICML 2020, https://arxiv.org/abs/1910.02806).

ReBias groups ImageNet classes into nine super-classes whose bias is texture. The classes
are given as ranges of the standard ImageNet class index (the position of the WordNet id in
the sorted list of the 1,000 ILSVRC-2012 ids, i.e. the order of an image-folder listing of
the training set). ImageNet-A (Hendrycks et al., CVPR 2021) keeps 200 of those classes in
folders named by WordNet id; its images are mapped through the same index.

Expected layout: ``<root>/<wnid>/*.JPEG`` (the training set, or a validation set rearranged
into class folders, or ImageNet-A). Texture-cluster labels are not part of the data: the bias
of every record is -1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .dfa import IMAGE_SUFFIXES, ImageList, ImageRecord

__all__ = ["IMAGENET9_CLASSES", "IMAGENET9_RANGES", "imagenet_class_order", "imagenet9_map", "read_imagenet9"]

IMAGENET9_CLASSES = ("dog", "cat", "frog", "turtle", "bird", "monkey", "fish", "crab", "insect")
#: Inclusive ranges of ImageNet class indices per super-class, in the order above.
IMAGENET9_RANGES = ((151, 254), (281, 285), (30, 32), (33, 37), (89, 97), (372, 378), (393, 397), (118, 121), (306, 310))

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


def imagenet9_map(class_order: list[str]) -> dict[str, int]:
    """WordNet id -> super-class index (0..8) for the ReBias ranges."""
    mapping = {}
    for target, (lo, hi) in enumerate(IMAGENET9_RANGES):
        for index in range(lo, hi + 1):
            mapping[class_order[index]] = target
    return mapping


def read_imagenet9(root: str | os.PathLike, class_order: list[str]) -> ImageList:
    """Images of the nine super-classes under ``root/<wnid>/``.

    Args:
        root: a folder of WordNet-id sub-folders (ImageNet train/val or ImageNet-A).
        class_order: from :func:`imagenet_class_order`.

    Raises:
        FileNotFoundError: ``root`` is missing or holds none of the 9-class folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ImageNet folder not found")
    mapping = imagenet9_map(class_order)
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name in mapping):
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(path, mapping[folder.name], -1))
    if not records:
        raise FileNotFoundError(f"{root}: no image in any of the {len(mapping)} 9-class WordNet folders")
    return ImageList(records, root)
