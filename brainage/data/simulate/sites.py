"""The simulated cohort: studies, sites, acquisition settings, participants and splits.

Sites are confounded with age as in OpenBHB: each site recruits from one age profile
(child-only, adolescent, young-adult, adult, lifespan), so the site of a scan says a lot
about the subject's age. Each site has 1 to ``max_acquisitions`` acquisition settings
(``siteXacq``, the classes of the challenge's site probe), each with its own scanner
parameters drawn around the site's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from brainage.data.cache import SPLITS
from brainage.data.participants import PARTICIPANT_COLUMNS
from brainage.errors import BrainAgeError

__all__ = ["AgeProfile", "PROFILES", "Acquisition", "Cohort", "design_cohort", "default_n_sites", "BIAS_ORDER"]

#: DCT order per axis of the multiplicative bias fields.
BIAS_ORDER = 4
_STREAM_COHORT, _STREAM_SITE, _STREAM_ACQ = 0, 2, 3


@dataclass(frozen=True)
class AgeProfile:
    """Age distribution of the sites of one kind.

    ``kind`` is ``"normal"`` (mean, sd), ``"lognormal"`` (median, sigma: log-scale SD) or
    ``"gamma"`` (lo + Gamma(shape, scale)); draws are truncated to [lo, hi] years.
    ``site_share`` / ``subject_share``: fraction of sites / subjects of this kind.
    """

    name: str
    kind: str
    a: float
    b: float
    lo: float
    hi: float
    site_share: float
    subject_share: float
    site_shift_sd: float
    p_male: tuple[float, float]
    p_15t: float

    def sample(self, rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
        """``n`` ages (years) in [lo, hi], drawn by rejection from the untruncated law."""
        out = np.empty(0)
        while out.size < n:
            m = 2 * (n - out.size) + 8
            if self.kind == "normal":
                x = rng.normal(self.a + shift, self.b, m)
            elif self.kind == "lognormal":
                x = (self.a + shift) * np.exp(rng.normal(0.0, self.b, m))
            elif self.kind == "gamma":
                x = self.lo + shift + rng.gamma(self.a, self.b, m)
            else:
                raise BrainAgeError(f"unknown age profile kind {self.kind!r}")
            out = np.concatenate([out, x[(x >= self.lo) & (x <= self.hi)]])
        return out[:n]


PROFILES: dict[str, AgeProfile] = {
    p.name: p
    for p in (
        AgeProfile("child", "normal", 11.0, 2.8, 6.0, 17.0, 0.25, 0.20, 1.2, (0.55, 0.8), 0.2),
        AgeProfile("adolescent", "lognormal", 15.0, 0.35, 7.0, 45.0, 0.20, 0.20, 1.5, (0.55, 0.85), 0.25),
        AgeProfile("young", "gamma", 2.0, 2.3, 18.0, 35.0, 0.25, 0.35, 0.8, (0.4, 0.6), 0.15),
        AgeProfile("adult", "normal", 38.0, 12.0, 18.0, 65.0, 0.10, 0.10, 3.0, (0.4, 0.6), 0.35),
        AgeProfile("lifespan", "normal", 50.0, 19.0, 18.0, 88.0, 0.20, 0.15, 3.0, (0.4, 0.6), 0.45),
    )
}


def default_n_sites(n_subjects: int) -> int:
    """Number of sites by default: ~18 for 1,000 subjects, fewer for small data sets."""
    return int(np.clip(round(4.5 * np.sqrt(n_subjects / 60.0)), 4, 40))


@dataclass
class Acquisition:
    """Scanner/protocol parameters of one site x acquisition setting (one ``siteXacq`` class).

    Quasi-raw T1: tissue intensities relative to WM (``csf_wm_ratio``, ``gm_wm_ratio``),
    ``intensity_scale`` (WM intensity, arbitrary units) and ``intensity_offset`` (fraction
    of the scale), Rician ``noise_sd`` (fraction of WM), Gaussian point-spread ``fwhm_mm``,
    residual bias field (log-SD ``bias_sd``, pattern ``bias_coef``), rigid misregistration
    (``shift_mm``, ``rotation_deg``). VBM: grey/white boundary bias of the segmentation
    ``vbm_boundary_shift_mm``, global ``vbm_gm_scale``, ``vbm_noise_sd`` (GM fraction units),
    ``vbm_fwhm_mm``, ``vbm_bias_sd``, and misregistration ``vbm_shift_mm`` /
    ``vbm_rotation_deg``.
    """

    study: str
    site: str
    acquisition_setting: int
    profile: str
    external: bool
    magnetic_field_strength: float
    intensity_scale: float
    intensity_offset: float
    csf_wm_ratio: float
    gm_wm_ratio: float
    noise_sd: float
    fwhm_mm: float
    bias_sd: float
    shift_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    vbm_boundary_shift_mm: float
    vbm_gm_scale: float
    vbm_noise_sd: float
    vbm_fwhm_mm: float
    vbm_bias_sd: float
    vbm_shift_mm: tuple[float, float, float]
    vbm_rotation_deg: tuple[float, float, float]
    bias_coef: np.ndarray = field(repr=False)
    n_subjects: int = 0

    @property
    def site_x_acq(self) -> str:
        return f"{self.site}_{self.acquisition_setting}"

    def row(self) -> dict:
        """Scalar parameters as a flat dict (one row of ``simulation/sites.tsv``)."""
        d = {k: v for k, v in asdict(self).items() if k != "bias_coef"}
        for key in ("shift_mm", "rotation_deg", "vbm_shift_mm", "vbm_rotation_deg"):
            vec = d.pop(key)
            stem, unit = key.rsplit("_", 1)
            for axis, v in zip("xyz", vec, strict=True):
                d[f"{stem}_{axis}_{unit}"] = float(v)
        d["siteXacq"] = self.site_x_acq
        return d

    @classmethod
    def ideal(cls) -> Acquisition:
        """A noise-free, unbiased, perfectly registered 3 T acquisition (for effect sizes)."""
        return cls(
            study="ideal",
            site="ideal",
            acquisition_setting=1,
            profile="none",
            external=False,
            magnetic_field_strength=3.0,
            intensity_scale=1.0,
            intensity_offset=0.0,
            csf_wm_ratio=0.25,
            gm_wm_ratio=0.66,
            noise_sd=0.0,
            fwhm_mm=0.0,
            bias_sd=0.0,
            shift_mm=(0.0, 0.0, 0.0),
            rotation_deg=(0.0, 0.0, 0.0),
            vbm_boundary_shift_mm=0.0,
            vbm_gm_scale=1.0,
            vbm_noise_sd=0.0,
            vbm_fwhm_mm=0.0,
            vbm_bias_sd=0.0,
            vbm_shift_mm=(0.0, 0.0, 0.0),
            vbm_rotation_deg=(0.0, 0.0, 0.0),
            bias_coef=np.zeros((BIAS_ORDER,) * 3, dtype=np.float32),
        )


def bias_spectrum(order: int = BIAS_ORDER) -> np.ndarray:
    """Relative SD of each DCT coefficient of a bias field (no constant term), unit RMS."""
    k = np.indices((order,) * 3).astype(np.float64)
    var = 1.0 / (1.0 + (k**2).sum(0)) ** 2
    var[0, 0, 0] = 0.0
    msq = np.where(k == 0, 1.0, 0.5).prod(0)
    return np.sqrt(var / (var * msq).sum())


def _draw_contrast(rng: np.random.Generator, field_t: float) -> tuple[float, float, float]:
    """(csf/wm, gm/wm, noise) for a field strength: 1.5 T flatter contrast, more noise."""
    if field_t >= 2.0:
        return rng.uniform(0.15, 0.30), rng.uniform(0.60, 0.72), rng.uniform(0.015, 0.035)
    return rng.uniform(0.25, 0.40), rng.uniform(0.68, 0.80), rng.uniform(0.025, 0.055)


def _site_acquisitions(
    seed: int, index: int, site: str, study: str, profile: AgeProfile, external: bool, n_acq: int
) -> list[Acquisition]:
    rng = np.random.default_rng([seed, _STREAM_SITE, index])
    field_t = 1.5 if rng.random() < profile.p_15t else 3.0
    scale = float(np.exp(rng.normal(np.log(600.0), 0.35)))
    bias_sd = rng.uniform(0.03, 0.10)
    bias = rng.standard_normal((BIAS_ORDER,) * 3) * bias_spectrum()
    shift = rng.normal(0.0, 1.0, 3)
    rot = rng.normal(0.0, 1.0, 3)
    seg = rng.normal(0.0, 0.12)
    gm_scale = rng.normal(1.0, 0.03)
    fwhm = rng.uniform(0.9, 1.8)
    csf_r, gm_r, noise = _draw_contrast(rng, field_t)
    out = []
    for acq in range(1, n_acq + 1):
        r = np.random.default_rng([seed, _STREAM_ACQ, index, acq])
        f = field_t if acq == 1 or r.random() > 0.15 else (3.0 if field_t < 2 else 1.5)
        c, g, nz = (csf_r, gm_r, noise) if f == field_t else _draw_contrast(r, f)
        sd = bias_sd * float(np.exp(r.normal(0.0, 0.15)))
        out.append(
            Acquisition(
                study=study,
                site=site,
                acquisition_setting=acq,
                profile=profile.name,
                external=external,
                magnetic_field_strength=f,
                intensity_scale=scale * float(np.exp(r.normal(0.0, 0.15))),
                intensity_offset=float(r.normal(0.0, 0.02)),
                csf_wm_ratio=float(np.clip(c + r.normal(0.0, 0.02), 0.08, 0.5)),
                gm_wm_ratio=float(np.clip(g + r.normal(0.0, 0.015), 0.5, 0.9)),
                noise_sd=float(nz * np.exp(r.normal(0.0, 0.15))),
                fwhm_mm=float(max(0.6, fwhm + (0.3 if f < 2 else 0.0) + r.normal(0.0, 0.15))),
                bias_sd=float(sd),
                shift_mm=tuple(float(v) for v in shift + r.normal(0.0, 0.3, 3)),
                rotation_deg=tuple(float(v) for v in rot + r.normal(0.0, 0.3, 3)),
                vbm_boundary_shift_mm=float(seg + (0.08 if f < 2 else 0.0) + r.normal(0.0, 0.04)),
                vbm_gm_scale=float(gm_scale * r.normal(1.0, 0.01)),
                vbm_noise_sd=float(0.5 * nz),
                vbm_fwhm_mm=float(0.6 * max(0.6, fwhm + r.normal(0.0, 0.15))),
                vbm_bias_sd=float(0.3 * sd),
                vbm_shift_mm=tuple(float(v) for v in 0.3 * (shift + r.normal(0.0, 0.3, 3))),
                vbm_rotation_deg=tuple(float(v) for v in 0.3 * (rot + r.normal(0.0, 0.3, 3))),
                bias_coef=(bias + 0.3 * r.standard_normal(bias.shape) * bias_spectrum()).astype(np.float32),
            )
        )
    return out


def _apportion(weights: np.ndarray, total: int, minimum: int = 0) -> np.ndarray:
    """Integers >= minimum summing to ``total``, proportional to ``weights`` (largest remainder)."""
    weights = np.asarray(weights, dtype=np.float64)
    base = np.full(len(weights), minimum, dtype=np.int64)
    rest = total - base.sum()
    if rest < 0:
        raise BrainAgeError(f"cannot give {minimum} to each of {len(weights)} groups out of {total}")
    share = weights / weights.sum() * rest
    out = base + np.floor(share).astype(np.int64)
    left = total - out.sum()
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    out[order[:left]] += 1
    return out


@dataclass
class Cohort:
    """The simulated study design.

    Attributes:
        acquisitions: one per ``siteXacq`` class.
        participants: one row per subject, ordered train, internal_test, external_test (then
            by id), with the OpenBHB columns known before imaging (tiv/gmv/wmv/csfv are added
            after rendering) and ``acq`` (index into ``acquisitions``).
    """

    acquisitions: list[Acquisition]
    participants: pd.DataFrame


def minimum_subjects(n_train_acq: int, n_external_acq: int) -> int:
    """Fewest subjects that fill every split: 2 per training acquisition, 1 per external one."""
    return 2 * n_train_acq + n_external_acq


def design_cohort(
    n_subjects: int,
    n_sites: int,
    seed: int,
    max_acquisitions: int = 3,
    external_fraction: float = 0.10,
    internal_fraction: float = 0.12,
) -> Cohort:
    """Draw sites, acquisition settings, participants (age, sex) and splits.

    Raises:
        ValueError: fewer than 2 sites, or too few subjects to give each training
            acquisition a train and an internal-test subject and each external one a subject.
    """
    if n_sites < 2:
        raise BrainAgeError(f"n_sites must be >= 2 (training sites and at least one external site), got {n_sites}")
    if max_acquisitions < 1:
        raise BrainAgeError(f"max_acquisitions must be >= 1, got {max_acquisitions}")
    # one generator drawn from in this order: site weights, external sites, site numbers,
    # acquisitions per site, subjects per acquisition, participant ids, then per acquisition
    # ages, sexes and internal-test subjects
    rng = np.random.default_rng([seed, _STREAM_COHORT])
    profiles, site_weight = _site_profiles(n_sites, rng)
    external = _external_sites(profiles, site_weight, n_sites, rng)
    # site numbering independent of the profile order; studies group up to 3 sites of a kind
    numbers = rng.permutation(n_sites)
    acqs = _draw_acquisitions(seed, profiles, external, numbers, max_acquisitions, rng)
    site_index = {str(int(numbers[i])): i for i in range(n_sites)}
    per_acq = _subjects_per_acquisition(acqs, site_weight, site_index, n_subjects, n_sites, external_fraction, rng)
    table = _draw_participants(seed, acqs, per_acq, site_index, n_subjects, internal_fraction, rng)
    return Cohort(acquisitions=acqs, participants=table)


def _site_profiles(n_sites: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """The age profile of each site (at least one lifespan site, two from 8 sites) and its ``(n_sites,)`` weight."""
    names = list(PROFILES)
    counts = _apportion(np.array([PROFILES[p].site_share for p in names]), n_sites)
    life = names.index("lifespan")
    need = 1 if n_sites < 8 else 2
    while counts[life] < need:
        counts[int(np.argmax(np.where(np.arange(len(names)) == life, -1, counts)))] -= 1
        counts[life] += 1
    profiles = [p for p, c in zip(names, counts, strict=True) for _ in range(c)]
    site_weight = np.array(
        [PROFILES[p].subject_share / counts[names.index(p)] * np.exp(rng.normal(0.0, 0.4)) for p in profiles]
    )
    return profiles, site_weight


def _external_sites(profiles: list[str], site_weight: np.ndarray, n_sites: int, rng: np.random.Generator) -> list[int]:
    """Indices of the external sites.

    An adult/lifespan site (a lifespan one kept for training), plus younger sites up to 12 % of
    the sites; the lightest site when no site qualifies.
    """
    n_ext = max(1, int(round(0.12 * n_sites)))
    old = [i for i, p in enumerate(profiles) if p in ("adult", "lifespan")]
    life_sites = [i for i, p in enumerate(profiles) if p == "lifespan"]
    candidates = [i for i in old if not (profiles[i] == "lifespan" and len(life_sites) == 1 and n_sites >= 8)]
    external: list[int] = []
    if candidates:
        external.append(int(rng.choice(candidates)))
    young = [i for i, p in enumerate(profiles) if p not in ("adult", "lifespan") and i not in external]
    while len(external) < n_ext and young:
        pick = int(rng.choice(young))
        external.append(pick)
        young.remove(pick)
    if not external:
        external.append(int(np.argmin(site_weight)))
    return external


def _draw_acquisitions(
    seed: int,
    profiles: list[str],
    external: list[int],
    numbers: np.ndarray,
    max_acquisitions: int,
    rng: np.random.Generator,
) -> list[Acquisition]:
    """1 to ``max_acquisitions`` acquisition settings per site, site by site; site ``i`` is named ``numbers[i]``."""
    acqs: list[Acquisition] = []
    study_count: dict[str, int] = {}
    p_acq = np.array([0.55, 0.3, 0.15][:max_acquisitions])
    for i, p in enumerate(profiles):
        k = study_count.get(p, 0)
        study_count[p] = k + 1
        study = f"sim-{p}-{k // 3 + 1}"
        n_acq = 1 + int(rng.choice(len(p_acq), p=p_acq / p_acq.sum()))
        acqs.extend(_site_acquisitions(seed, i, str(int(numbers[i])), study, PROFILES[p], i in external, n_acq))
    return acqs


def _subjects_per_acquisition(
    acqs: list[Acquisition],
    site_weight: np.ndarray,
    site_index: dict[str, int],
    n_subjects: int,
    n_sites: int,
    external_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(n_acquisitions,)`` subject counts: at least 2 per training acquisition, 1 per external one.

    Raises:
        ValueError: fewer subjects than those minima.
    """
    is_ext = np.array([a.external for a in acqs])
    acq_weight = (
        np.array([site_weight[site_index[a.site]] for a in acqs]) * rng.dirichlet(np.full(len(acqs), 4.0)) * len(acqs)
    )
    need_min = minimum_subjects(int((~is_ext).sum()), int(is_ext.sum()))
    if n_subjects < need_min:
        raise BrainAgeError(
            f"n_subjects={n_subjects} is too small for {n_sites} sites with {len(acqs)} acquisition settings "
            f"({int((~is_ext).sum())} in training sites, {int(is_ext.sum())} external): need at least "
            f"{need_min} (2 per training acquisition for train + internal_test, 1 per external one); "
            "pass more subjects or fewer sites"
        )
    n_external = int(np.clip(round(external_fraction * n_subjects), is_ext.sum(), n_subjects - 2 * (~is_ext).sum()))
    per_acq = np.zeros(len(acqs), dtype=np.int64)
    per_acq[is_ext] = _apportion(acq_weight[is_ext], n_external, 1)
    per_acq[~is_ext] = _apportion(acq_weight[~is_ext], n_subjects - n_external, 2)
    return per_acq


def _draw_participants(
    seed: int,
    acqs: list[Acquisition],
    per_acq: np.ndarray,
    site_index: dict[str, int],
    n_subjects: int,
    internal_fraction: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The participants (ids, age in years, sex, split) of every acquisition, sorted by split then id.

    Sets each acquisition's ``n_subjects``.
    """
    rows = []
    ids = rng.choice(9_000_000, size=n_subjects, replace=False) + 1_000_000
    pos = 0
    for j, (acq, n) in enumerate(zip(acqs, per_acq, strict=True)):
        acq.n_subjects = int(n)
        prof = PROFILES[acq.profile]
        site_rng = np.random.default_rng([seed, _STREAM_SITE, site_index[acq.site], 99])
        shift = site_rng.normal(0.0, prof.site_shift_sd)
        p_male = site_rng.uniform(*prof.p_male)
        ages = np.round(prof.sample(rng, int(n), shift), 2)
        male = rng.random(int(n)) < p_male
        if acq.external:
            split = np.full(int(n), "external_test", dtype=object)
        else:
            n_int = int(np.clip(round(internal_fraction * n), 1, n - 1))
            split = np.full(int(n), "train", dtype=object)
            split[rng.choice(int(n), n_int, replace=False)] = "internal_test"
        for a, m, s in zip(ages, male, split, strict=True):
            rows.append(
                {
                    "participant_id": str(int(ids[pos])),
                    "study": acq.study,
                    "sex": "male" if m else "female",
                    "age": float(a),
                    "site": acq.site,
                    "diagnosis": "control",
                    "magnetic_field_strength": acq.magnetic_field_strength,
                    "acquisition_setting": acq.acquisition_setting,
                    "siteXacq": acq.site_x_acq,
                    "split": s,
                    "acq": j,
                }
            )
            pos += 1
    table = pd.DataFrame(rows)
    table["_split_order"] = table["split"].map({s: i for i, s in enumerate(SPLITS)})
    table["_id"] = table["participant_id"].astype(np.int64)
    table = table.sort_values(["_split_order", "_id"], kind="stable").drop(columns=["_split_order", "_id"])
    return table.reset_index(drop=True)


def participants_table(cohort: Cohort, volumes: pd.DataFrame) -> pd.DataFrame:
    """The OpenBHB participants table: the cohort plus tiv/csfv/gmv/wmv (cm^3), in OpenBHB column order."""
    table = cohort.participants.drop(columns=["acq"]).copy()
    for col in ("tiv", "csfv", "gmv", "wmv"):
        table[col] = np.round(volumes[col].to_numpy(dtype=np.float64), 3)
    return table[list(PARTICIPANT_COLUMNS)]
