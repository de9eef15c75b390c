"""Lifespan trajectories of the simulated brain: what changes with (biological) age.

All shifts are relative to the template anatomy, which stands for a young adult of
``reference_age`` years (the MNI152 2009 average is built from young adults). Ages in
years, shifts in mm, densities and factors dimensionless.

Mechanisms (see ``docs/simulator.md`` for the resulting volumes):

* cortical thinning: the pial boundary moves inwards (grey matter becomes sulcal CSF),
  fast in childhood, slower in adulthood, faster again late in life, together with a
  proportional loss of cortical grey-matter density (thinning finer than the template
  resolves); both scaled per region (frontal > parietal/temporal > occipital > cerebellum
  > deep structures);
* myelination: the grey/white boundary moves outwards, saturating in mid-adulthood;
* diffuse white-matter loss late in life (white matter becomes CSF-like);
* subcortical grey-matter loss (basal ganglia, thalamus) in adulthood;
* ventricles: their boundary moves outwards with age, accelerating after ~60, half by a
  deformation that compresses the surrounding tissue, half by loss of periventricular
  tissue (the ventricle wall recedes);
* head size: total intracranial volume (TIV) by sex, still growing a little in childhood.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["AgeingModel"]


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


@dataclass(frozen=True)
class AgeingModel:
    """Parameters of the lifespan trajectories (defaults: the simulator's ground truth)."""

    reference_age: float = 25.0
    # cortical thinning rate (mm/year): adult + developmental (decaying) + late (sigmoid)
    pial_rate_adult: float = 0.013
    pial_rate_dev: float = 0.040
    pial_dev_tau: float = 6.0
    pial_rate_late: float = 0.016
    pial_late_age: float = 65.0
    pial_late_width: float = 7.0
    # cortical GM density change per mm of pial shift (thinning below the template's resolution)
    gm_density_per_mm: float = 0.10
    # grey/white boundary (mm): wm_gain (1 - exp(-(a-6)/tau)), myelination
    wm_gain: float = 0.95
    wm_tau: float = 11.0
    # diffuse white-matter loss: density 1 - rate * (a - onset)_+^2
    wm_loss_rate: float = 9.0e-5
    wm_loss_onset: float = 40.0
    # subcortical grey-matter density loss per year after onset
    deep_gm_rate: float = 0.0015
    deep_gm_onset: float = 20.0
    # ventricle boundary (mm): linear + accelerating term after vent_onset
    vent_linear: float = 0.02
    vent_accel: float = 0.0035
    vent_onset: float = 55.0
    vent_individual_sd: float = 0.5
    # share of the ventricle shift done by deformation (the rest: periventricular tissue loss)
    vent_deformation_fraction: float = 0.5
    # individual variation
    gap_sd_child: float = 1.0
    gap_sd_adult: float = 3.5
    gap_sd_ramp: float = 20.0
    rate_sd_global: float = 0.12
    rate_sd_regional: float = 0.25
    # head size (cm^3): TIV of adults by sex, and the childhood deficit
    tiv_male_mean: float = 1540.0
    tiv_male_sd: float = 125.0
    tiv_female_mean: float = 1365.0
    tiv_female_sd: float = 110.0
    tiv_child_deficit: float = 0.07
    tiv_child_tau: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)

    def _pial_integral(self, age: np.ndarray) -> np.ndarray:
        a = np.asarray(age, dtype=np.float64)
        w = self.pial_late_width
        return (
            self.pial_rate_adult * a
            - self.pial_rate_dev * self.pial_dev_tau * np.exp(-(a - 6.0) / self.pial_dev_tau)
            + self.pial_rate_late * w * _softplus((a - self.pial_late_age) / w)
        )

    def pial_shift(self, age: np.ndarray | float) -> np.ndarray:
        """Outward shift of the pial boundary (mm) at ``age`` relative to the reference age."""
        return -(self._pial_integral(age) - self._pial_integral(self.reference_age))

    def pial_rate(self, age: np.ndarray | float) -> np.ndarray:
        """Cortical thinning rate (mm/year, positive = thinning) of an average region."""
        a = np.asarray(age, dtype=np.float64)
        late = 1.0 / (1.0 + np.exp(-(a - self.pial_late_age) / self.pial_late_width))
        return (
            self.pial_rate_adult
            + self.pial_rate_dev * np.exp(-(a - 6.0) / self.pial_dev_tau)
            + self.pial_rate_late * late
        )

    def _wm_raw(self, age: np.ndarray | float) -> np.ndarray:
        a = np.asarray(age, dtype=np.float64)
        return self.wm_gain * (1.0 - np.exp(-(a - 6.0) / self.wm_tau))

    def wm_shift(self, age: np.ndarray | float) -> np.ndarray:
        """Outward shift of the grey/white boundary (mm) relative to the reference age."""
        return self._wm_raw(age) - self._wm_raw(self.reference_age)

    def wm_density(self, age: np.ndarray | float) -> np.ndarray:
        """Fraction of white matter left by diffuse late-life loss (1 before the onset)."""
        a = np.asarray(age, dtype=np.float64)
        return np.clip(1.0 - self.wm_loss_rate * np.clip(a - self.wm_loss_onset, 0, None) ** 2, 0.5, 1.0)

    def deep_gm_density(self, age: np.ndarray | float) -> np.ndarray:
        """Fraction of subcortical grey matter left (relative to the reference age)."""
        a = np.asarray(age, dtype=np.float64)
        loss = self.deep_gm_rate * (
            np.clip(a - self.deep_gm_onset, 0, None) - max(self.reference_age - self.deep_gm_onset, 0)
        )
        return np.clip(1.0 - loss, 0.5, 1.2)

    def ventricle_shift(self, age: np.ndarray | float) -> np.ndarray:
        """Outward shift of the ventricle boundary (mm) relative to the reference age."""
        a = np.asarray(age, dtype=np.float64)
        accel = self.vent_accel * (2.0 * _softplus((a - self.vent_onset) / 2.0)) ** 2
        ref = self.vent_accel * (2.0 * _softplus((self.reference_age - self.vent_onset) / 2.0)) ** 2
        return self.vent_linear * (a - self.reference_age) + accel - ref

    def gap_sd(self, age: np.ndarray | float) -> np.ndarray:
        """SD (years) of the true brain-age gap: smaller in children, constant in adults."""
        a = np.asarray(age, dtype=np.float64)
        t = np.clip((a - 6.0) / self.gap_sd_ramp, 0.0, 1.0)
        return self.gap_sd_child + (self.gap_sd_adult - self.gap_sd_child) * t

    def tiv_mean(self, age: np.ndarray | float, male: np.ndarray | bool) -> np.ndarray:
        """Expected TIV (cm^3) by age and sex."""
        a = np.asarray(age, dtype=np.float64)
        adult = np.where(male, self.tiv_male_mean, self.tiv_female_mean)
        return adult * (1.0 - self.tiv_child_deficit * np.exp(-(a - 6.0) / self.tiv_child_tau))

    def tiv_sd(self, male: np.ndarray | bool) -> np.ndarray:
        return np.where(male, self.tiv_male_sd, self.tiv_female_sd)
