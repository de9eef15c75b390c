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
of every record is -1. The clusters of ReBias's "unbiased" metric are read separately
(:func:`load_texture_clusters`, :func:`texture_clusters_from_csv`) and scored by
:func:`brainage.debias.evaluate.texture_unbiased_accuracy`.

Order: the listing of :func:`read_imagenet9` (and so the rows of a ``.npz`` written by
``brainage debias-data folder --kind imagenet9``) is the sorted WordNet-id folders, and in
each the sorted file names. Cluster labels given as bare arrays must follow that order.
ReBias's ``clusters/cluster_label_{1,2,3}.pth`` follow ReBias's own listing instead: sorted
folders, but file names in ``os.walk`` order (not sorted; it depends on the file system the
files were listed on), so those tensors cannot be used as they are: re-order them by path.
ReBias's repository also has ``clusters/9class_imagenet_val.csv`` (``path``, ``category``,
``cluster1..3``) which names each image: :func:`texture_clusters_from_csv` orders it by the
listing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from brainage.errors import BrainAgeError, InputNotFoundError

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
    "load_texture_clusters",
    "texture_clusters_from_csv",
]

IMAGENET9_CLASSES = ("dog", "cat", "frog", "turtle", "bird", "monkey", "fish", "crab", "insect")
#: Inclusive ranges of ImageNet class indices per super-class, in the order above.
IMAGENET9_RANGES = (
    (151, 254),
    (281, 285),
    (30, 32),
    (33, 37),
    (89, 97),
    (372, 378),
    (393, 397),
    (118, 121),
    (306, 310),
)
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
        from brainage.io import read_text

        wnids = [line.split()[0] for line in read_text(source).splitlines() if line.strip()]
        bad = [w for w in wnids if not _WNID.match(w)]
        if bad:
            raise BrainAgeError(f"{source}: malformed WordNet ids {bad[:5]}")
    else:
        raise InputNotFoundError(f"{source}: neither an ImageNet folder nor a synset list")
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise BrainAgeError(
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
        raise InputNotFoundError(f"{root}: ImageNet folder not found")
    mapping = IMAGENET_A_CLASS_TO_INDEX if class_order is None else imagenet9_map(class_order)
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name in mapping):
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(path, mapping[folder.name], -1))
    if not records:
        raise InputNotFoundError(f"{root}: no image in any of the {len(mapping)} 9-class WordNet folders")
    return ImageList(records, root)


def _cluster_vector(values, path: Path, n_images: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise BrainAgeError(
            f"{path}: expected a 1-D integer array of {n_images} cluster labels, got {values.dtype} {values.shape}"
        )
    if values.shape[0] != n_images:
        raise BrainAgeError(f"{path}: expected {n_images} cluster labels (one per image), found {values.shape[0]}")
    if values.size and values.min() < 0:
        raise BrainAgeError(f"{path}: cluster labels must be non-negative, found {int(values.min())}")
    return values.astype(np.int64)


def load_texture_clusters(paths, n_images: int) -> np.ndarray:
    """Texture-cluster labels of the validation images, one file per clustering.

    Args:
        paths: one file per clustering (ReBias: three): ``.npy`` (read without pickle) or
            ``.pth`` / ``.pt`` (``torch.load(weights_only=True)``), each holding a 1-D integer
            array / tensor with one non-negative label per image.
        n_images: the number of images evaluated; every file must hold exactly that many labels.

    Returns:
        ``int64 (R, n_images)``.

    The labels must follow the order of the evaluated images, i.e. of :func:`read_imagenet9`'s
    listing (sorted WordNet-id folders, sorted file names). ReBias's ``cluster_label_*.pth``
    follow its own ``os.walk`` listing (file names not sorted) and must be re-ordered by path
    first (see the module docstring and :func:`texture_clusters_from_csv`); nothing here can
    detect a wrong order.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: an unknown suffix, an unreadable file, or content that is not a 1-D
            non-negative integer array of ``n_images`` labels; the message names the file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise BrainAgeError("no texture-cluster file given")
    rows = []
    for path in paths:
        if not path.is_file():
            raise InputNotFoundError(f"{path}: texture-cluster file not found")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                values = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise BrainAgeError(f"{path}: not a readable .npy array of cluster labels ({err})") from err
        elif suffix in (".pth", ".pt"):
            import torch

            try:
                values = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises several unrelated types for corrupt files
                raise BrainAgeError(f"{path}: not a readable torch file ({err})") from err
            if not isinstance(values, torch.Tensor):
                raise BrainAgeError(
                    f"{path}: expected a 1-D integer tensor of {n_images} cluster labels, got {type(values).__name__}"
                )
            if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
                raise BrainAgeError(f"{path}: expected a 1-D integer tensor of cluster labels, got {values.dtype}")
            values = values.numpy()
        else:
            raise BrainAgeError(f"{path}: texture-cluster files must be .npy, .pth or .pt, got {path.suffix!r}")
        rows.append(_cluster_vector(values, path, int(n_images)))
    return np.stack(rows)


def texture_clusters_from_csv(csv_path: str | os.PathLike, listing: ImageList) -> np.ndarray:
    """Cluster labels from a table that names each image, in the order of ``listing``.

    Args:
        csv_path: a CSV file with a ``path`` column (``<wnid>/<file name>``, as in ReBias's
            ``clusters/9class_imagenet_val.csv``) and one integer column per clustering whose
            name starts with ``cluster`` (``cluster1``, ``cluster2``, ...); other columns are
            ignored.
        listing: the evaluated images (:func:`read_imagenet9`); each is looked up by its folder
            and file name.

    Returns:
        ``int64 (R, len(listing))``, ready for ``np.save`` as one ``.npy`` per clustering.

    Raises:
        FileNotFoundError: missing file.
        ValueError: no ``path`` / ``cluster*`` columns, non-integer or negative labels,
            duplicated paths, or images of ``listing`` the table does not name (the first few
            are listed).
    """
    import pandas as pd

    from brainage.io import read_table

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputNotFoundError(f"{csv_path}: texture-cluster table not found")
    table = read_table(csv_path, sep=",")
    columns = [c for c in table.columns if str(c).startswith("cluster")]
    if "path" not in table.columns or not columns:
        raise BrainAgeError(
            f"{csv_path}: expected a 'path' column and 'cluster1', 'cluster2', ... columns, got {list(table.columns)}"
        )
    keys = table["path"].astype(str).str.replace("\\", "/", regex=False)
    keys = keys.map(lambda k: "/".join(k.split("/")[-2:]))
    if keys.duplicated().any():
        raise BrainAgeError(f"{csv_path}: paths named twice, e.g. {keys[keys.duplicated()].iloc[0]!r}")
    index = pd.Index(keys)
    wanted = [f"{p.parent.name}/{p.name}" for p in listing.paths]
    position = index.get_indexer(wanted)
    missing = [w for w, i in zip(wanted, position, strict=True) if i < 0]
    if missing:
        raise BrainAgeError(f"{csv_path}: {len(missing)} of the {len(wanted)} images have no row, e.g. {missing[:3]}")
    rows = []
    for column in columns:
        values = pd.to_numeric(table[column].str.strip(), errors="coerce").to_numpy()
        if not np.issubdtype(values.dtype, np.integer):
            raise BrainAgeError(f"{csv_path}: column {column!r} must hold integer cluster labels, got {values.dtype}")
        rows.append(_cluster_vector(values[position], csv_path, len(wanted)))
    return np.stack(rows)
