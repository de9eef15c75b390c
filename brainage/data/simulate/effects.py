"""Ground-truth effect sizes of the simulator, measured on noise-free average subjects.

``python -m brainage.data.simulate.effects [--downsample F]`` prints the tables quoted in
``docs/simulator.md``: tissue volumes by age, regional grey-matter change per decade, the
white-matter peak and ventricle growth. "Average subject": no brain-age gap, no individual
deformation or rate variation, mean male TIV of an adult (so head growth does not enter),
an ideal acquisition (no noise, bias, blur or misregistration).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pandas as pd

from brainage.data.simulate.ageing import AgeingModel
from brainage.data.simulate.anatomy import REGIONS, grid_fields
from brainage.data.simulate.sites import Acquisition
from brainage.data.simulate.subject import SubjectDraw, render_vbm

__all__ = ["trajectories", "regional_change", "summary", "cohort_summary"]

AGES: tuple[float, ...] = (6, 8, 10, 12, 15, 18, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 88)


def trajectories(ages: tuple[float, ...] = AGES, downsample: int = 3, model: AgeingModel | None = None) -> pd.DataFrame:
    """Volumes (cm^3) of the average subject at each age, and GM volume per region (cm^3)."""
    model = model or AgeingModel()
    gf = grid_fields("vbm", downsample)
    acq = Acquisition.ideal()
    adult = SubjectDraw.average(40.0, model)
    rows = []
    lobe = gf.lobe[gf.mask]
    for age in ages:
        draw = replace(SubjectDraw.average(float(age), model), tiv=adult.tiv, tiv_scale=adult.tiv_scale)
        res = render_vbm(draw, acq, gf, model)
        row = {"age": float(age), **{k: v for k, v in res.volumes.items() if not k.endswith("_true")}}
        gm = res.volume[gf.mask]
        for label, name in REGIONS.items():
            row[f"gm_{name}"] = float(gm[lobe == label].sum(dtype=np.float64)) * gf.voxel_cm3
        rows.append(row)
    return pd.DataFrame(rows)


def regional_change(
    table: pd.DataFrame, spans: tuple[tuple[float, float], ...] = ((6, 18), (20, 40), (40, 60), (60, 80))
) -> pd.DataFrame:
    """Percent change per decade of GM (whole brain and per region), WM, CSF and ventricles over age spans."""
    cols = ["gmv"] + [f"gm_{n}" for n in REGIONS.values()] + ["wmv", "csfv", "ventricle_cm3"]
    t = table.set_index("age")
    out = {}
    for lo, hi in spans:
        a, b = t.loc[float(lo), cols], t.loc[float(hi), cols]
        out[f"{lo:g}-{hi:g}"] = ((b / a) ** (10.0 / (hi - lo)) - 1.0) * 100.0
    return pd.DataFrame(out).round(2)


def summary(table: pd.DataFrame) -> dict[str, float]:
    """Headline numbers: WM peak age, ventricle volume ratios, GM change 20 -> 80."""
    t = table.set_index("age")
    fine = np.interp(np.arange(6.0, 88.01, 0.5), t.index.to_numpy(), t["wmv"].to_numpy())
    return {
        "wm_peak_age": float(np.arange(6.0, 88.01, 0.5)[int(np.argmax(fine))]),
        "ventricles_80_over_25": float(t.loc[80.0, "ventricle_cm3"] / t.loc[25.0, "ventricle_cm3"]),
        "ventricles_60_over_25": float(t.loc[60.0, "ventricle_cm3"] / t.loc[25.0, "ventricle_cm3"]),
        "gm_change_20_80_percent": float((t.loc[80.0, "gmv"] / t.loc[20.0, "gmv"] - 1.0) * 100.0),
        "gm_change_6_20_percent": float((t.loc[20.0, "gmv"] / t.loc[6.0, "gmv"] - 1.0) * 100.0),
        "wm_change_6_peak_percent": float((fine.max() / t.loc[6.0, "wmv"] - 1.0) * 100.0),
        "wm_change_peak_80_percent": float((t.loc[80.0, "wmv"] / fine.max() - 1.0) * 100.0),
        "csf_change_25_80_percent": float((t.loc[80.0, "csfv"] / t.loc[25.0, "csfv"] - 1.0) * 100.0),
    }


def _row(profile: str, g: pd.DataFrame) -> dict:
    """One row of :func:`cohort_summary`: the sites, subjects and ages of the participants ``g``."""
    return {
        "profile": profile,
        "sites": g["site"].nunique(),
        "siteXacq": g["siteXacq"].nunique(),
        "subjects": len(g),
        "external subjects": int((g["split"] == "external_test").sum()),
        "age mean": g["age"].mean(),
        "age min": g["age"].min(),
        "age max": g["age"].max(),
        "1.5 T share": (g["magnetic_field_strength"] < 2).mean(),
    }


def cohort_summary(n_subjects: int = 1000, seed: int = 0, n_sites: int | None = None) -> pd.DataFrame:
    """Sites, subjects and ages per site profile of the default design (the age confounding)."""
    from brainage.data.simulate.sites import default_n_sites, design_cohort

    cohort = design_cohort(n_subjects, n_sites or default_n_sites(n_subjects), seed)
    t = cohort.participants.assign(profile=[cohort.acquisitions[i].profile for i in cohort.participants["acq"]])
    rows = [_row(profile, g) for profile, g in t.groupby("profile", sort=False)]
    rows.append(_row("all", t))
    out = pd.DataFrame(rows).round(2)
    out.attrs["median_age"] = float(t["age"].median())
    out.attrs["sd_age"] = float(t["age"].std())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--downsample", type=int, default=3)
    args = parser.parse_args(argv)
    table = trajectories(downsample=args.downsample)
    pd.set_option("display.width", 200)
    print(table.round(1).to_string(index=False))
    print()
    print(regional_change(table).to_string())
    print()
    for k, v in summary(table).items():
        print(f"{k}: {v:.2f}")
    print()
    cohort = cohort_summary()
    print(cohort.to_string(index=False))
    print(f"median age {cohort.attrs['median_age']:.1f}, SD {cohort.attrs['sd_age']:.1f}")


if __name__ == "__main__":
    main()
