"""Realistic synthetic OpenBHB: a multi-site, lifespan data set built from the MNI152 anatomy.

>>> from brainage.data.simulate import simulate_openbhb
>>> simulate_openbhb("synthetic", n_subjects=1000, downsample=3, seed=0, n_jobs=2)  # doctest: +SKIP

Modules, one concept each: :mod:`.anatomy` (template fields, masks, parcels on the OpenBHB
grids), :mod:`.ageing` (lifespan trajectories), :mod:`.sites` (studies, sites, acquisition
settings, participants, splits), :mod:`.subject` (one subject's draws and volumes),
:mod:`.builder` (writing both layouts), :mod:`.effects` (measured ground-truth effect sizes).
See ``docs/simulator.md``.
"""

from brainage.data.simulate.ageing import AgeingModel
from brainage.data.simulate.builder import NOT_SIMULATED, parse_modalities, simulate_openbhb
from brainage.data.simulate.sites import default_n_sites, design_cohort

__all__ = ["simulate_openbhb", "AgeingModel", "design_cohort", "default_n_sites", "parse_modalities", "NOT_SIMULATED"]
