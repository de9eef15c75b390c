"""ComBat harmonisation (neuroHarmonize) of voxel features and of a whole training cache.

``ComBatHarmonizer`` is the estimator (chunked over voxels); ``harmonize_cache`` streams a
cache written by ``brainage preprocess`` into a harmonised cache of the same format.
"""

from brainage.harmonize.cache import EXTERNAL_STRATEGIES, harmonize_cache
from brainage.harmonize.combat import (
    DEFAULT_CHUNK_SIZE,
    SITE,
    ComBatHarmonizer,
    chunk_bounds,
    covariate_frame,
    encode_sex,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EXTERNAL_STRATEGIES",
    "SITE",
    "ComBatHarmonizer",
    "chunk_bounds",
    "covariate_frame",
    "encode_sex",
    "harmonize_cache",
]
