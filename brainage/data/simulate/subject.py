"""One simulated subject: its random draws, and its VBM and quasi-raw volumes on a grid.

Generative model, per subject (template mm coordinates, see :mod:`.anatomy`):

1. biological age = age + true brain-age gap; all ageing uses the biological age;
2. tissue composition at a template position (:func:`tissue`): pial and grey/white
   boundary shifts (scaled by an individual, regionally varying rate field), diffuse white
   matter loss, subcortical grey-matter loss;
3. anatomy: a smooth random deformation (DCT basis, RMS ~2 mm) plus ventricle growth
   (boundary moved outwards by the ventricle shift, surrounding tissue compressed);
4. quasi-raw T1 (affinely normalised, so head size is removed): the deformed tissue
   fractions mixed with the site's intensities, residual bias field, point-spread blur,
   Rician noise, skull-stripped; site misregistration (rigid) applied to the sampling;
5. VBM (CAT12-like modulated GM in MNI space): the template-space GM fraction (with the
   site's segmentation bias) x local volume change (Jacobian determinant of the
   deformation) x head-size scale x individual GM density, with a small residual
   misregistration, residual bias, blur and noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from brainage.data.simulate.ageing import AgeingModel
from brainage.data.simulate.anatomy import (
    DCT_ORDER,
    TEMPLATE_SHAPE,
    GridFields,
    template,
    ventricle_limits,
)
from brainage.data.simulate.sites import BIAS_ORDER, Acquisition, bias_spectrum

__all__ = ["SubjectDraw", "draw_subject", "tissue", "render_vbm", "render_quasiraw", "VbmResult"]

_STREAM_SUBJECT = 1
_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: RMS (mm, per component) of the individual deformation and the fraction DARTEL-like
#: normalisation leaves in the VBM maps.
DEFORMATION_RMS_MM = 2.0
RESIDUAL_REGISTRATION = 0.15
RATE_ORDER = 4
DENSITY_ORDER = 4
DENSITY_RMS = 0.03


def _spectrum(order: int, k0: float, power: float, exclude_below: int) -> np.ndarray:
    """Per-coefficient SD of a DCT random field with unit RMS over the box."""
    k = np.indices((order,) * 3).astype(np.float64)
    var = (1.0 + (k**2).sum(0) / k0**2) ** (-power)
    var[k.sum(0) < exclude_below] = 0.0
    msq = np.where(k == 0, 1.0, 0.5).prod(0)
    return np.sqrt(var / (var * msq).sum()).astype(np.float32)


_DEFORM_SD = _spectrum(DCT_ORDER, 3.0, 2.0, 2)
_RATE_SD = _spectrum(RATE_ORDER, 2.0, 2.0, 1)
_DENSITY_SD = _spectrum(DENSITY_ORDER, 2.0, 2.0, 1)


@dataclass
class SubjectDraw:
    """Everything random about one subject (drawn from ``(seed, index)`` only).

    Attributes:
        age: chronological age (years); bio_age = age + gap (years).
        tiv: target intracranial volume (cm^3); tiv_scale: its ratio to the template's.
        deform: (3, K, K, K) DCT coefficients of the deformation (mm).
        rate_log: global log multiplier of the ageing rate; rate_coef: its regional field.
        density_coef: DCT coefficients of the log GM density field (VBM).
        ventricle_shift: ventricle boundary shift (mm) after individual variation, made of
            ventricle_deformation (mm, by deformation, within the invertible range) and
            ventricle_erosion (mm, periventricular tissue turned into CSF).
        jitter_shift_mm, jitter_rotation_deg: per-scan positioning error added to the site's.
        bias_coef: subject part of the bias field pattern.
        noise_seeds: seeds of the VBM and quasi-raw noise.
    """

    age: float
    sex: str
    gap: float
    bio_age: float
    tiv: float
    tiv_scale: float
    deform: np.ndarray = field(repr=False)
    rate_log: float = 0.0
    rate_coef: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    density_coef: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    ventricle_shift: float = 0.0
    ventricle_deformation: float = 0.0
    jitter_shift_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    jitter_rotation_deg: np.ndarray = field(default_factory=lambda: np.zeros(3))
    bias_coef: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    noise_seeds: tuple[np.random.SeedSequence, np.random.SeedSequence] | None = field(default=None, repr=False)

    @classmethod
    def average(cls, age: float, model: AgeingModel, sex: str = "male") -> SubjectDraw:
        """The noise-free average subject of an age: no gap, no deformation, mean TIV."""
        tiv = float(model.tiv_mean(age, sex == "male"))
        vent = float(model.ventricle_shift(age))
        deform = _ventricle_deformation(vent, model)
        return cls(
            age=age,
            sex=sex,
            gap=0.0,
            bio_age=age,
            tiv=tiv,
            tiv_scale=tiv / template().icv_cm3,
            deform=np.zeros((3,) + (DCT_ORDER,) * 3, dtype=np.float32),
            rate_coef=np.zeros((RATE_ORDER,) * 3, dtype=np.float32),
            density_coef=np.zeros((DENSITY_ORDER,) * 3, dtype=np.float32),
            ventricle_shift=vent,
            ventricle_deformation=deform,
            bias_coef=np.zeros((BIAS_ORDER,) * 3, dtype=np.float32),
        )

    @property
    def ventricle_erosion(self) -> float:
        """Ventricle shift (mm) not made by deformation: periventricular tissue turned into CSF."""
        return float(self.ventricle_shift - self.ventricle_deformation)

    def row(self) -> dict:
        """Scalar ground truth for ``simulation/ground_truth.tsv``."""
        return {
            "age": self.age,
            "biological_age": round(self.bio_age, 4),
            "brain_age_gap": round(self.gap, 4),
            "tiv_target_cm3": round(self.tiv, 3),
            "tiv_scale": round(self.tiv_scale, 6),
            "ageing_rate_multiplier": round(float(np.exp(self.rate_log)), 6),
            "ventricle_shift_mm": round(self.ventricle_shift, 6),
            "ventricle_deformation_mm": round(self.ventricle_deformation, 6),
            "ventricle_erosion_mm": round(self.ventricle_erosion, 6),
            "deformation_rms_mm": round(_dct_rms(self.deform), 4),
        }


def _dct_rms(coef: np.ndarray) -> float:
    """RMS over the box of the DCT fields with coefficients ``coef`` (..., K, K, K), averaged over leading axes."""
    k = np.indices(coef.shape[-3:])
    msq = np.where(k == 0, 1.0, 0.5).prod(0)
    total = (coef.astype(np.float64) ** 2 * msq).reshape(-1, msq.size).sum(1).mean()
    return float(np.sqrt(total))


def _ventricle_deformation(shift: float, model: AgeingModel) -> float:
    """The deformation's share (mm) of a ventricle shift, kept invertible; erosion makes the rest."""
    shrink, growth = ventricle_limits()
    return float(np.clip(model.vent_deformation_fraction * shift, -shrink, growth))


def draw_subject(seed: int, index: int, age: float, sex: str, model: AgeingModel) -> SubjectDraw:
    """Draw a subject's random quantities from ``SeedSequence([seed, 1, index])``."""
    ss = np.random.SeedSequence([int(seed), _STREAM_SUBJECT, int(index)])
    params, vbm_noise, qr_noise = ss.spawn(3)
    rng = np.random.default_rng(params)
    male = sex == "male"
    gap = float(rng.normal(0.0, model.gap_sd(age)))
    bio = max(age + gap, 3.0)
    tiv = float(model.tiv_mean(age, male) + model.tiv_sd(male) * rng.standard_normal())
    deform = rng.standard_normal(_DEFORM_SD.shape + (3,)).transpose(3, 0, 1, 2) * _DEFORM_SD * DEFORMATION_RMS_MM
    rate_log = float(rng.normal(0.0, model.rate_sd_global))
    rate_coef = rng.standard_normal(_RATE_SD.shape) * _RATE_SD * model.rate_sd_regional
    density_coef = rng.standard_normal(_DENSITY_SD.shape) * _DENSITY_SD * DENSITY_RMS
    vent = float(model.ventricle_shift(bio) + rng.normal(0.0, model.vent_individual_sd))
    deform_v = _ventricle_deformation(vent, model)
    return SubjectDraw(
        age=float(age),
        sex=sex,
        gap=float(bio - age),
        bio_age=float(bio),
        tiv=tiv,
        tiv_scale=tiv / template().icv_cm3,
        deform=deform.astype(np.float32),
        rate_log=rate_log,
        rate_coef=rate_coef.astype(np.float32),
        density_coef=density_coef.astype(np.float32),
        ventricle_shift=vent,
        ventricle_deformation=deform_v,
        jitter_shift_mm=rng.normal(0.0, 0.5, 3),
        jitter_rotation_deg=rng.normal(0.0, 0.5, 3),
        bias_coef=(rng.standard_normal((BIAS_ORDER,) * 3) * bias_spectrum()).astype(np.float32),
        noise_seeds=(vbm_noise, qr_noise),
    )


# --------------------------------------------------------------------------- helpers


def dct_eval(coef: np.ndarray, bases: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Field (X, Y, Z) = sum_abc coef[a, b, c] Bx[:, a] By[:, b] Bz[:, c] (separable)."""
    k = coef.shape
    t = np.tensordot(bases[0][:, : k[0]], coef, axes=(1, 0))  # X, Kb, Kc
    t = np.tensordot(t, bases[1][:, : k[1]], axes=(1, 1))  # X, Kc, Y
    t = np.tensordot(t, bases[2][:, : k[2]], axes=(1, 1))  # X, Y, Z
    return np.ascontiguousarray(t, dtype=np.float32)


def _rotation(deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(np.asarray(deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sample_positions(
    gf: GridFields, rot_deg: np.ndarray, shift_mm: np.ndarray, displacement: np.ndarray
) -> np.ndarray:
    """Template-mm positions (3, n_support) sampled by the support voxels, in work-grid units.

    ``displacement`` (3, n_support) is added after the rigid transform (rotation about the
    grid centre by ``rot_deg``, then ``shift_mm``).
    """
    r = _rotation(rot_deg).astype(np.float32)
    centre = ((np.asarray(TEMPLATE_SHAPE, dtype=np.float64) - 1.0) / 2.0).astype(np.float32)
    q = gf.support_q - centre[:, None]
    out = r @ q
    out += (centre + np.asarray(shift_mm, dtype=np.float32))[:, None]
    out += displacement
    out *= np.float32(1.0 / gf.work_spacing)
    return out


def _sample_fields(gf: GridFields, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples (5, n_support) of the work fields at ``coords`` (work-grid units)."""
    out = np.empty((gf.work.shape[0], coords.shape[1]), dtype=np.float32)
    for c in range(gf.work.shape[0]):
        ndi.map_coordinates(gf.work[c], coords, output=out[c], order=1, mode="nearest", prefilter=False)
    return out


def _on_support(field: np.ndarray, gf: GridFields) -> np.ndarray:
    return field.reshape(-1)[gf.support]


def _scatter(values: np.ndarray, gf: GridFields) -> np.ndarray:
    out = np.zeros(int(np.prod(gf.shape)), dtype=np.float32)
    out[gf.support] = values
    return out.reshape(gf.shape)


def _smooth(volume: np.ndarray, fwhm_mm: float, gf: GridFields) -> np.ndarray:
    """Blur to a total point spread of ``fwhm_mm`` given the fields' pre-smoothing."""
    sigma_mm = np.sqrt(max((fwhm_mm / _FWHM) ** 2 - gf.presmooth_mm**2, 0.0))
    sigma = sigma_mm / gf.spacing
    if sigma < 0.05:
        return volume
    return ndi.gaussian_filter(volume, sigma, truncate=3.0, output=np.float32)


def rate_field(draw: SubjectDraw, gf: GridFields) -> np.ndarray:
    """Individual ageing-rate multiplier on the support (n_support,), log-normal around exp(rate_log)."""
    return np.exp(_on_support(dct_eval(draw.rate_coef, gf.bases), gf) + np.float32(draw.rate_log)).astype(np.float32)


@dataclass
class Tissue:
    """Tissue fractions of each support voxel (template-voxel units), all (n_support,) float32."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    icv: np.ndarray


def tissue(
    fields: np.ndarray,
    draw: SubjectDraw,
    model: AgeingModel,
    rate: np.ndarray,
    gf: GridFields,
    boundary_bias_mm: float = 0.0,
) -> Tissue:
    """Aged tissue composition from sampled template fields (see :data:`anatomy.FIELD_NAMES`).

    ``rate`` (individual) and the grid's ``regional`` weight scale the cortical thinning
    locally, ``deep_gm`` weighs the subcortical grey-matter loss and ``ventricle_wall`` the
    periventricular loss; ``boundary_bias_mm`` moves the grey/white boundary as a
    segmentation bias would (VBM only).
    """
    bio_age = draw.bio_age
    t0, w0, icv, edge, wm_edge = fields
    pial = np.float32(model.pial_shift(bio_age))
    shift = pial * rate * gf.regional - np.float32(draw.ventricle_erosion) * gf.ventricle_wall
    t = np.clip(t0 + shift * edge, 0.0, icv)
    w = np.clip(w0 + np.float32(model.wm_shift(bio_age) + boundary_bias_mm) * wm_edge, 0.0, t)
    g = (t - w) * (np.float32(1.0) + np.float32(model.gm_density_per_mm) * pial * rate * gf.regional)
    g *= np.float32(1.0) - gf.deep_gm * np.float32(1.0 - model.deep_gm_density(bio_age))
    g = np.clip(g, 0.0, icv - w)
    w = w * np.float32(model.wm_density(bio_age))
    c = np.clip(icv - g - w, 0.0, None)
    return Tissue(gm=g, wm=w, csf=c, icv=icv)


# --------------------------------------------------------------------------- VBM


@dataclass
class VbmResult:
    """A subject's VBM volume (X, Y, Z) float32, tissue volumes (cm^3) and 284 parcel GM volumes (cm^3)."""

    volume: np.ndarray
    volumes: dict[str, float]
    roi: np.ndarray


def jacobian(draw: SubjectDraw, gf: GridFields) -> np.ndarray:
    """Local volume change (subject / template) of the deformation on the support of a VBM grid.

    1 / det(I + grad u + s H) at the template position (u: random displacement, s H: the
    ventricle-growth term), rescaled so that its ICV-weighted mean is 1 (the deformation
    redistributes volume; head size is the separate TIV scale). Returns (n_support,).
    """
    du = [[None] * 3 for _ in range(3)]
    for a in range(3):
        for b in range(3):
            bases = tuple(gf.dbases[i] if i == b else gf.bases[i] for i in range(3))
            du[a][b] = _on_support(dct_eval(draw.deform[a], bases), gf)
    s = np.float32(draw.ventricle_deformation)
    h = gf.vent_hessian
    hidx = {(0, 0): 0, (1, 1): 1, (2, 2): 2, (0, 1): 3, (1, 0): 3, (0, 2): 4, (2, 0): 4, (1, 2): 5, (2, 1): 5}
    m = [
        [du[a][b] + s * h[hidx[a, b]] + (np.float32(1.0) if a == b else np.float32(0.0)) for b in range(3)]
        for a in range(3)
    ]
    det = (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )
    return (np.float32(1.0) / np.clip(det, 0.05, None)).astype(np.float32)


def _normalise_jacobian(jac: np.ndarray, icv: np.ndarray) -> np.ndarray:
    w = icv.astype(np.float64)
    return (jac * np.float32(w.sum() / (w * jac).sum())).astype(np.float32)


def _bias_field(draw: SubjectDraw, acq: Acquisition, sd: float, gf: GridFields) -> np.ndarray | np.float32:
    """Multiplicative bias field (X, Y, Z): the site's smooth field plus 30 % of a subject's own, scaled by ``sd``."""
    if sd <= 0:
        return np.float32(1.0)
    coef = (acq.bias_coef + np.float32(0.3) * draw.bias_coef) * np.float32(sd)
    return np.exp(dct_eval(coef, gf.bases))


def render_vbm(draw: SubjectDraw, acq: Acquisition, gf: GridFields, model: AgeingModel) -> VbmResult:
    """Modulated GM map of a subject on a VBM grid, plus its tissue volumes (cm^3)."""
    disp = np.stack([_on_support(dct_eval(draw.deform[a], gf.bases), gf) for a in range(3)])
    disp *= np.float32(RESIDUAL_REGISTRATION)
    coords = _sample_positions(gf, np.asarray(acq.vbm_rotation_deg), np.asarray(acq.vbm_shift_mm), disp)
    fields = _sample_fields(gf, coords)
    del coords, disp
    rate = rate_field(draw, gf)
    tis = tissue(fields, draw, model, rate, gf, acq.vbm_boundary_shift_mm)
    true = tissue(fields, draw, model, rate, gf)
    jac = _normalise_jacobian(jacobian(draw, gf), tis.icv) * np.float32(draw.tiv_scale)
    density = np.exp(_on_support(dct_eval(draw.density_coef, gf.bases), gf))
    gm = tis.gm * jac * density * np.float32(acq.vbm_gm_scale)
    vox = gf.voxel_cm3
    vent = gf.vent_roi.reshape(-1)[gf.support]
    volumes = {
        "gmv": float(gm.sum(dtype=np.float64)) * vox,
        "wmv": float((tis.wm * jac).sum(dtype=np.float64)) * vox,
        "csfv": float((tis.csf * jac).sum(dtype=np.float64)) * vox,
        "gmv_true": float((true.gm * jac * density).sum(dtype=np.float64)) * vox,
        "wmv_true": float((true.wm * jac).sum(dtype=np.float64)) * vox,
        "ventricle_cm3": float((true.csf * jac)[vent].sum(dtype=np.float64)) * vox,
    }
    volumes["tiv"] = volumes["gmv"] + volumes["wmv"] + volumes["csfv"]
    out = _scatter(gm, gf)
    out *= _bias_field(draw, acq, acq.vbm_bias_sd, gf)
    out = _smooth(out, acq.vbm_fwhm_mm, gf)
    if acq.vbm_noise_sd > 0:
        rng = np.random.default_rng(draw.noise_seeds[0])
        noise = rng.standard_normal(gf.shape, dtype=np.float32)
        out = out + np.float32(acq.vbm_noise_sd) * np.sqrt(np.clip(out, 0.0, 1.0)) * noise
    out = np.clip(out, 0.0, None).astype(np.float32)
    roi = np.bincount(gf.parcels, weights=out[gf.mask].astype(np.float64), minlength=284) * vox
    return VbmResult(volume=out, volumes=volumes, roi=roi.astype(np.float32))


# --------------------------------------------------------------------------- quasi-raw


def render_quasiraw(draw: SubjectDraw, acq: Acquisition, gf: GridFields, model: AgeingModel) -> np.ndarray:
    """Skull-stripped, affinely normalised T1 (X, Y, Z) float32 of a subject on a quasi-raw grid."""
    disp = np.stack([_on_support(dct_eval(draw.deform[a], gf.bases), gf) for a in range(3)])
    disp += np.float32(draw.ventricle_deformation) * gf.vent_gradient
    rot = np.asarray(acq.rotation_deg) + draw.jitter_rotation_deg
    shift = np.asarray(acq.shift_mm) + draw.jitter_shift_mm
    coords = _sample_positions(gf, rot, shift, disp)
    fields = _sample_fields(gf, coords)
    del coords, disp
    tis = tissue(fields, draw, model, rate_field(draw, gf), gf)
    signal = _scatter(np.float32(acq.csf_wm_ratio) * tis.csf + np.float32(acq.gm_wm_ratio) * tis.gm + tis.wm, gf)
    strip = _scatter((tis.icv > 0.3).astype(np.float32), gf) > 0.5
    signal *= _bias_field(draw, acq, acq.bias_sd, gf)
    signal = _smooth(signal, acq.fwhm_mm, gf)
    if acq.noise_sd > 0:
        rng = np.random.default_rng(draw.noise_seeds[1])
        sd = np.float32(acq.noise_sd)
        n1 = rng.standard_normal(gf.shape, dtype=np.float32)
        n2 = rng.standard_normal(gf.shape, dtype=np.float32)
        signal = np.sqrt((signal + sd * n1) ** 2 + (sd * n2) ** 2)
    out = np.where(strip, (signal + np.float32(acq.intensity_offset)) * np.float32(acq.intensity_scale), 0.0)
    return np.clip(out, 0.0, None).astype(np.float32)
