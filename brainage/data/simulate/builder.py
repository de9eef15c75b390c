"""Write a simulated data set in the OpenBHB layouts (:func:`simulate_openbhb`).

The whole folder is built under a hidden staging name next to ``out`` and renamed into
place at the end, so ``out`` is either absent, the previous version, or complete. Inside,
every file is written atomically (:mod:`brainage.io`), and the RAMP arrays are filled row by
row through memory maps (never held in RAM) under temporary names.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage import __version__
from brainage.data.layouts import SPLIT_FOLDER
from brainage.data.modalities import MODALITIES, grid, ramp_row_slices
from brainage.data.simulate.ageing import AgeingModel
from brainage.data.simulate.anatomy import full_masks, grid_fields, ventricle_limits
from brainage.data.simulate.sites import Cohort, default_n_sites, design_cohort, participants_table
from brainage.data.simulate.subject import (
    DEFORMATION_RMS_MM,
    RESIDUAL_REGISTRATION,
    draw_subject,
    render_quasiraw,
    render_vbm,
)
from brainage.errors import BrainAgeError, OutputExistsError
from brainage.io import atomic_path, make_folders, save_json, save_npy, save_table

__all__ = ["simulate_openbhb", "parse_modalities", "NOT_SIMULATED"]

log = logging.getLogger(__name__)

#: What the synthetic data set leaves out (also written to ``simulation/config.json``).
NOT_SIMULATED: tuple[str, ...] = (
    "xhemi, desikan_roi and destrieux_roi blocks of RAMP rows (FreeSurfer): zeros",
    "vbm_roi holds the GM volume (cm^3) of 284 k-means parcels, not the Neuromorphometrics atlas",
    "diagnoses other than control; sex differences beyond head size",
    "motion, ringing, wrap-around, defacing, lesions, white-matter hyperintensities",
    "longitudinal scans (one session per subject)",
    "site effects that depend on the subject's anatomy beyond the segmentation boundary bias",
)


def parse_modalities(modalities: str | Sequence[str]) -> tuple[str, ...]:
    """``"vbm,quasiraw"`` or a sequence -> a tuple of known modality names (no duplicates)."""
    items = (
        [m.strip() for m in modalities.split(",")]
        if isinstance(modalities, str)
        else [str(m).strip() for m in modalities]
    )
    items = [m for m in items if m]
    if not items:
        raise BrainAgeError(f"no modality given; choose from {sorted(MODALITIES)}")
    unknown = [m for m in items if m not in MODALITIES]
    if unknown:
        raise BrainAgeError(
            f"unknown modality {unknown[0]!r}; expected a comma-separated subset of {sorted(MODALITIES)}"
        )
    return tuple(dict.fromkeys(items))


@dataclass
class _Context:
    """Shared by the workers (inherited through fork, or pickled to spawned workers)."""

    root: Path
    seed: int
    factor: int
    modalities: tuple[str, ...]
    table: pd.DataFrame
    cohort: Cohort
    model: AgeingModel
    ramp: dict[str, Path] | None
    ramp_rows: np.ndarray | None
    row_slices: dict[str, slice] | None

    def __post_init__(self) -> None:
        self.records = self.table.to_dict("records")


_CTX: _Context | None = None
_MEMMAPS: dict[Path, np.memmap] = {}


def _init_worker(ctx: _Context | None) -> None:
    global _CTX
    if ctx is not None:
        _CTX = ctx
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _memmap(path: Path) -> np.memmap:
    if path not in _MEMMAPS:
        _MEMMAPS[path] = np.load(path, mmap_mode="r+")
    return _MEMMAPS[path]


def _simulate_one(index: int) -> dict:
    """Render, write and summarise subject ``index`` (a row of the participants table)."""
    ctx = _CTX
    assert ctx is not None, "worker context not initialised"
    rec = ctx.records[index]
    acq = ctx.cohort.acquisitions[int(rec["acq"])]
    pid = str(rec["participant_id"])
    draw = draw_subject(ctx.seed, index, float(rec["age"]), str(rec["sex"]), ctx.model)
    folder = ctx.root / SPLIT_FOLDER[rec["split"]] / "derivatives" / f"sub-{pid}" / "ses-1"
    gv = grid_fields("vbm", ctx.factor)
    vbm = render_vbm(draw, acq, gv, ctx.model)
    if "vbm" in ctx.modalities:
        save_npy(folder / MODALITIES["vbm"].file_pattern.format(id=pid), vbm.volume[None])
    qr = None
    if "quasiraw" in ctx.modalities:
        gq = grid_fields("quasiraw", ctx.factor)
        qr = render_quasiraw(draw, acq, gq, ctx.model)
        save_npy(folder / MODALITIES["quasiraw"].file_pattern.format(id=pid), qr[None])
    if ctx.ramp is not None:
        part = "train" if rec["split"] == "train" else "test"
        sl = ctx.row_slices
        mm = _memmap(ctx.ramp[part])
        r = int(ctx.ramp_rows[index])
        # the unsimulated blocks stay as created (zeros; holes in a sparse file)
        mm[r, sl["vbm"]] = vbm.volume[gv.mask]
        mm[r, sl["quasiraw"]] = qr[grid_fields("quasiraw", ctx.factor).mask]
        mm[r, sl["vbm_roi"]] = vbm.roi
    rate = float(np.exp(draw.rate_log))
    return {
        "participant_id": pid,
        **{k: vbm.volumes[k] for k in ("tiv", "csfv", "gmv", "wmv")},
        **draw.row(),
        "pial_shift_mm": round(float(ctx.model.pial_shift(draw.bio_age)) * rate, 6),
        "wm_boundary_shift_mm": round(float(ctx.model.wm_shift(draw.bio_age)), 6),
        "gmv_true_cm3": round(vbm.volumes["gmv_true"], 3),
        "wmv_true_cm3": round(vbm.volumes["wmv_true"], 3),
        "ventricle_cm3": round(vbm.volumes["ventricle_cm3"], 3),
    }


def _write_masks(root: Path, factor: int, ramp: bool) -> dict:
    """``resource/`` (and ``ramp/resource/``) mask images and ``resources.json``; returns its content."""
    info: dict = {"synthetic": True, "downsample": factor, "generator": f"brainage {__version__}"}
    folders = [root / "resource"] + ([root / "ramp" / "resource"] if ramp else [])
    for name, mod in MODALITIES.items():
        shape, affine = grid(name, factor)
        data = np.ascontiguousarray(full_masks()[name][::factor, ::factor, ::factor])
        img = nib.Nifti1Image(data, affine)
        img.header.set_data_dtype(np.float32)
        img.header.set_xyzt_units("mm")
        for folder in folders:
            with atomic_path(folder / mod.mask_file) as tmp:
                nib.save(img, tmp)
        info[name] = {
            "mask": mod.mask_file,
            "threshold": mod.threshold,
            "n_voxels": int((data > mod.threshold).sum()),
            "shape": list(shape),
            "affine": np.asarray(affine).tolist(),
        }
    for folder in folders:
        save_json(folder / "resources.json", info)
    return info


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            return
        if not overwrite:
            raise OutputExistsError(f"output {out} already exists; pass overwrite=True (--overwrite) to replace it")
        if not out.is_dir():
            raise OutputExistsError(f"output {out} exists and is not a folder")


def _progress(iterable: Iterable, total: int, enabled: bool) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc="simulate", unit="subject", disable=not enabled)


def simulate_openbhb(
    out: str | os.PathLike,
    n_subjects: int = 600,
    downsample: int = 3,
    seed: int = 0,
    *,
    n_sites: int | None = None,
    modalities: str | Sequence[str] = ("vbm", "quasiraw"),
    ramp: bool = False,
    n_jobs: int = 1,
    overwrite: bool = False,
    max_acquisitions: int = 3,
    external_fraction: float = 0.10,
    internal_fraction: float = 0.12,
    model: AgeingModel | None = None,
    progress: bool = True,
) -> Path:
    """Simulate a multi-site OpenBHB-like data set and write it in the per-subject layout.

    Args:
        out: folder to create (``participants.tsv``, ``resource/``, ``train/``, ``val/``,
            ``simulation/`` and, with ``ramp``, ``ramp/``).
        n_subjects: number of participants over all splits.
        downsample: integer factor F; arrays live on ``grid(modality, F)`` (F = 1: the real
            121x145x121 VBM and 182x218x182 quasi-raw grids).
        seed: everything is a function of the seed (and the arguments above); the same
            seed gives bit-identical files whatever ``n_jobs``.
        n_sites: number of sites (default: :func:`default_n_sites`, 18 for 1,000 subjects).
        modalities: ``"vbm"``, ``"quasiraw"`` or both (comma-separated string or sequence).
        ramp: also write the RAMP stacked layout under ``out/ramp`` (needs both modalities).
        n_jobs: worker processes (-1: all CPUs).
        overwrite: replace an existing non-empty ``out``.
        max_acquisitions: most acquisition settings per site (``siteXacq`` classes).
        external_fraction: share of subjects in external (held-out) sites.
        internal_fraction: share of each training acquisition's subjects held out as
            internal_test.
        model: lifespan trajectories (default :class:`AgeingModel`).
        progress: show a progress bar.

    Returns:
        ``Path(out)``.

    Raises:
        ValueError: bad argument (too few subjects for the sites, factor < 1, unknown
            modality, RAMP without both modalities, ...).
        FileExistsError: ``out`` exists, is not empty, and ``overwrite`` is False.
    """
    out = Path(out)
    n_subjects, downsample, seed, mods, n_jobs = _checked_arguments(
        n_subjects, downsample, seed, modalities, ramp, external_fraction, internal_fraction, n_jobs
    )
    n_sites = default_n_sites(n_subjects) if n_sites is None else int(n_sites)
    _check_out(out, overwrite)
    model = model or AgeingModel()
    cohort = design_cohort(n_subjects, n_sites, seed, max_acquisitions, external_fraction, internal_fraction)
    table = cohort.participants

    log.info("preparing the template anatomy on the factor-%d grids", downsample)
    grid_fields("vbm", downsample)
    if "quasiraw" in mods:
        grid_fields("quasiraw", downsample)

    make_folders(out.parent)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        info = _write_masks(stage, downsample, ramp)
        ramp_paths, ramp_rows, slices = _create_ramp_arrays(stage, table, info) if ramp else (None, None, None)
        ctx = _Context(
            root=stage,
            seed=seed,
            factor=downsample,
            modalities=mods,
            table=table,
            cohort=cohort,
            model=model,
            ramp=ramp_paths,
            ramp_rows=ramp_rows,
            row_slices=slices,
        )
        records = _run(ctx, n_jobs, progress)
        _write_tables(stage, ctx, records, info, n_sites, max_acquisitions, external_fraction, internal_fraction)
        if ramp_paths is not None:
            _publish_ramp_arrays(ramp_paths)
        _swap_into_place(stage, out)
    except BaseException:
        _MEMMAPS.clear()
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _checked_arguments(
    n_subjects: int,
    downsample: int,
    seed: int,
    modalities: str | Sequence[str],
    ramp: bool,
    external_fraction: float,
    internal_fraction: float,
    n_jobs: int,
) -> tuple[int, int, int, tuple[str, ...], int]:
    """``(n_subjects, downsample, seed, modalities, n_jobs)`` as integers and a modality tuple; raises on a bad one."""
    if isinstance(n_subjects, bool) or int(n_subjects) != n_subjects or n_subjects < 1:
        raise BrainAgeError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    if isinstance(downsample, bool) or int(downsample) != downsample or not 1 <= downsample <= 16:
        raise BrainAgeError(
            f"downsample must be an integer in [1, 16] (1 = the full OpenBHB grids), got {downsample!r}"
        )
    if int(seed) != seed or seed < 0:
        raise BrainAgeError(f"seed must be a non-negative integer, got {seed!r}")
    n_subjects, downsample, seed = int(n_subjects), int(downsample), int(seed)
    mods = parse_modalities(modalities)
    if ramp and set(mods) != set(MODALITIES):
        raise BrainAgeError(
            f"the RAMP layout holds both modalities: ramp=True needs modalities vbm,quasiraw, got {','.join(mods)}"
        )
    if not 0.0 < external_fraction < 1.0 or not 0.0 < internal_fraction < 1.0:
        raise BrainAgeError("external_fraction and internal_fraction must lie in (0, 1)")
    n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    if n_jobs < 1:
        raise BrainAgeError(f"n_jobs must be >= 1 (or -1 for all CPUs), got {n_jobs}")
    return n_subjects, downsample, seed, mods, n_jobs


def _create_ramp_arrays(
    stage: Path, table: pd.DataFrame, info: dict
) -> tuple[dict[str, Path], np.ndarray, dict[str, slice]]:
    """The RAMP ``train``/``test`` float32 arrays as zero-filled partial files under ``stage/ramp``.

    Returns:
        Their paths, each participant's row in its part's array (``(n,)``), and the slices of a row.
    """
    slices = ramp_row_slices(info["vbm"]["n_voxels"], info["quasiraw"]["n_voxels"])
    is_train = (table["split"] == "train").to_numpy()
    ramp_rows = np.where(is_train, np.cumsum(is_train) - 1, np.cumsum(~is_train) - 1)
    ramp_paths = {}
    for part, n in (("train", int(is_train.sum())), ("test", int((~is_train).sum()))):
        path = stage / "ramp" / f".{part}.npy.partial"
        path.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, slices["destrieux_roi"].stop))
        del mm
        ramp_paths[part] = path
    return ramp_paths, ramp_rows, slices


def _publish_ramp_arrays(ramp_paths: dict[str, Path]) -> None:
    """Close the workers' memory maps, sync the partial RAMP arrays and give them their final names."""
    _MEMMAPS.clear()
    for part, path in ramp_paths.items():
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(path, path.with_name(f"{part}.npy"))


def _run(ctx: _Context, n_jobs: int, progress: bool) -> list[dict]:
    global _CTX
    n = len(ctx.table)
    _CTX = ctx
    try:
        if n_jobs == 1:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1):
                return list(_progress(map(_simulate_one, range(n)), n, progress))
        methods = mp.get_all_start_methods()
        method = "fork" if "fork" in methods else "spawn"
        pool_ctx = mp.get_context(method)
        init_arg = None if method == "fork" else ctx
        chunk = max(1, min(16, n // (4 * n_jobs)))
        with cf.ProcessPoolExecutor(
            max_workers=n_jobs, mp_context=pool_ctx, initializer=_init_worker, initargs=(init_arg,)
        ) as pool:
            return list(_progress(pool.map(_simulate_one, range(n), chunksize=chunk), n, progress))
    finally:
        _CTX = None
        _MEMMAPS.clear()


def _write_tables(
    root: Path,
    ctx: _Context,
    records: list[dict],
    info: dict,
    n_sites: int,
    max_acquisitions: int,
    external_fraction: float,
    internal_fraction: float,
) -> None:
    table, cohort = ctx.table, ctx.cohort
    res = pd.DataFrame(records)
    if not (res["participant_id"].to_numpy() == table["participant_id"].to_numpy()).all():
        raise RuntimeError("worker results came back out of order")
    participants = participants_table(cohort, res)
    save_table(root / "participants.tsv", participants)

    gt_cols = [c for c in res.columns if c not in ("participant_id", "tiv", "csfv", "gmv", "wmv", "age")]
    truth = pd.concat(
        [
            table[["participant_id", "split", "study", "site", "siteXacq", "sex", "age"]].reset_index(drop=True),
            res[gt_cols].reset_index(drop=True),
        ],
        axis=1,
    )
    save_table(root / "simulation" / "ground_truth.tsv", truth)
    sites = pd.DataFrame([a.row() for a in cohort.acquisitions])
    first = ["study", "site", "acquisition_setting", "siteXacq", "profile", "external", "n_subjects"]
    save_table(root / "simulation" / "sites.tsv", sites[first + [c for c in sites.columns if c not in first]])

    if ctx.ramp is not None:
        is_train = participants["split"] == "train"
        save_table(root / "ramp" / "train.tsv", participants[is_train])
        save_table(root / "ramp" / "test.tsv", participants[~is_train])

    import nilearn
    import scipy

    shrink, growth = ventricle_limits()
    config = {
        "generator": {
            "package": "brainage",
            "version": __version__,
            "function": "brainage.data.simulate.simulate_openbhb",
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "nilearn": nilearn.__version__,
            "template": "MNI152 2009 T1/GM/WM and brain mask bundled with nilearn (resolution=1)",
        },
        "seed": ctx.seed,
        "n_subjects": len(table),
        "downsample": ctx.factor,
        "n_sites": n_sites,
        "n_acquisitions": len(cohort.acquisitions),
        "modalities": list(ctx.modalities),
        "ramp": ctx.ramp is not None,
        "max_acquisitions": max_acquisitions,
        "external_fraction": external_fraction,
        "internal_fraction": internal_fraction,
        "split_counts": {k: int(v) for k, v in table["split"].value_counts().items()},
        "ageing_model": ctx.model.to_dict(),
        "deformation_rms_mm": DEFORMATION_RMS_MM,
        "residual_registration_fraction": RESIDUAL_REGISTRATION,
        "ventricle_deformation_limits_mm": [-shrink, growth],
        "grids": {m: {k: info[m][k] for k in ("shape", "affine", "n_voxels")} for m in MODALITIES},
        "ramp_row_length": ramp_row_slices(info["vbm"]["n_voxels"], info["quasiraw"]["n_voxels"])["destrieux_roi"].stop,
        "not_simulated": list(NOT_SIMULATED),
    }
    save_json(root / "simulation" / "config.json", config)


def _swap_into_place(stage: Path, out: Path) -> None:
    trash = None
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
    os.replace(stage, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
