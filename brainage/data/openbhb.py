"""OpenBHB on disk: one import for the participants table, the masks and both public layouts.

The code lives in one module per concept; this module re-exports their public names, so
``from brainage.data.openbhb import open_dataset, mask_volumes`` keeps working:

- :mod:`brainage.data.modalities`: the modalities, their grids, the RAMP row layout, :class:`OpenBHBError`;
- :mod:`brainage.data.participants`: :func:`load_participants`, the table's columns;
- :mod:`brainage.data.masks`: :func:`load_mask`, :func:`mask_volumes`, :func:`unmask_rows`;
- :mod:`brainage.data.layouts`: :func:`open_dataset`, the per-subject and RAMP layouts, :func:`open_npy`.

See ``docs/data.md`` for the formats.
"""

from __future__ import annotations

from brainage.data.cache import SPLITS
from brainage.data.layouts import (
    SPLIT_FOLDER,
    OpenBHBDataset,
    PerSubjectLayout,
    RampLayout,
    detect_layout,
    open_dataset,
    open_npy,
    read_resources,
)
from brainage.data.masks import load_mask, mask_volumes, unmask_rows
from brainage.data.modalities import (
    MODALITIES,
    RAMP_BLOCKS,
    RAMP_ROW_LENGTH,
    Modality,
    OpenBHBError,
    get_modality,
    grid,
    grid_factor,
    ramp_row_slices,
)
from brainage.data.participants import (
    AGE_RANGE,
    NUMERIC_COLUMNS,
    PARTICIPANT_COLUMNS,
    REQUIRED_COLUMNS,
    SEX_VALUES,
    load_participants,
)

__all__ = [
    "AGE_RANGE",
    "MODALITIES",
    "Modality",
    "NUMERIC_COLUMNS",
    "PARTICIPANT_COLUMNS",
    "REQUIRED_COLUMNS",
    "SEX_VALUES",
    "SPLITS",
    "SPLIT_FOLDER",
    "RAMP_BLOCKS",
    "RAMP_ROW_LENGTH",
    "OpenBHBError",
    "get_modality",
    "load_participants",
    "load_mask",
    "mask_volumes",
    "unmask_rows",
    "ramp_row_slices",
    "grid",
    "grid_factor",
    "open_npy",
    "OpenBHBDataset",
    "PerSubjectLayout",
    "RampLayout",
    "detect_layout",
    "open_dataset",
    "read_resources",
]
