"""``MODEL_CARD.md``: the bundle's facts, in the sections of a model card (Mitchell et al., FAT* 2019).

Written from ``bundle.json`` alone, so every number in the card can be found there.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_model_card"]

MODALITY_TEXT = {
    "vbm": "grey-matter map from CAT12 voxel-based morphometry (modulated, mwp1) in MNI152 space, as in OpenBHB",
    "quasiraw": "quasi-raw T1w image (N4 bias-corrected, skull-stripped, affinely registered to MNI152 with 9 "
    "degrees of freedom), as in OpenBHB",
}
METHOD_TEXT = {
    "l1": "ResNet-18 regressing age with an L1 loss",
    "yaware": "ResNet-18 trained with the y-aware kernel contrastive loss, age read out by Ridge regression",
    "thr": "ResNet-18 trained with the L^thr kernel contrastive loss, age read out by Ridge regression",
    "exp": "ResNet-18 trained with the L^exp kernel contrastive loss, age read out by Ridge regression",
}
#: An age bin holding less than this fraction of the training subjects is called under-represented.
SPARSE_BIN_FRACTION = 0.05


def _num(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _errors_table(errors: dict[str, Any]) -> list[str]:
    lines = [
        "| split | subjects | outside training ages | sites | MAE (y) | RMSE (y) | r | mean gap (y) | "
        "corrected gap, mean ± sd (y) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"internal_test": "internal test (sites seen in training)", "external_test": "external test (unseen sites)"}
    for split, e in errors.items():
        if e is None:
            lines.append(f"| {names[split]} | 0 | | | | | | | |")
            continue
        corrected = (
            f"{_num(e.get('corrected_gap_mean'))} ± {_num(e.get('corrected_gap_std'))}"
            if "corrected_gap_mean" in e
            else "n/a"
        )
        lines.append(
            f"| {names[split]} | {e['n']} | {e['n_outside_training_ages']} | {e['n_sites']} | "
            f"{_num(e['mae'])} | {_num(e['rmse'])} | "
            f"{_num(e['r'])} | {_num(e['gap_mean'])} | {corrected} |"
        )
    return lines


def _scores_lines(scores: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """Challenge-score lines and site-leakage lines."""
    if not scores:
        none = ["Not given at export (`brainage export --scores scores.json`)."]
        return none, ["Not measured: export without `--scores` (the site probe of `brainage evaluate` measures it)."]
    lines = [
        f"From `{scores['file']}` (`brainage evaluate`, the OpenBHB challenge protocol on "
        f"{scores.get('n_features')} features, Ridge age probe):",
        "",
        f"- Int. MAE {_num(scores.get('int_mae'))} y, Ext. MAE {_num(scores.get('ext_mae'))} y, "
        f"L_c = BAcc^0.3 × Ext. MAE = {_num(scores.get('challenge_score'), 3)}",
    ]
    if scores.get("head"):
        lines.append(
            f"- the network's own regression head: Int. MAE {_num(scores['head'].get('int_mae'))} y, "
            f"Ext. MAE {_num(scores['head'].get('ext_mae'))} y"
        )
    bacc, chance = scores.get("bacc"), scores.get("bacc_chance")
    leak = [
        f"A logistic-regression probe on the features recognises the acquisition site of internal-test subjects "
        f"with a balanced accuracy of {_num(100 * bacc if bacc is not None else None, 1)} % "
        f"(chance: {_num(100 * chance if chance is not None else None, 1)} %, "
        f"{scores.get('n_sites_train')} training sites). The further above chance, the more site information "
        "the features carry, and the more a new site's scanner can shift predictions."
    ]
    return lines, leak


def _sparse_bins(cohort: dict[str, Any]) -> list[str]:
    hist = cohort["age_histogram"]
    n = cohort["n"]
    return [
        f"{hist['edges'][i]:g}-{hist['edges'][i + 1]:g} y ({c} subject{'s' * (c != 1)})"
        for i, c in enumerate(hist["counts"])
        if c < SPARSE_BIN_FRACTION * n
    ]


def render_model_card(spec: dict[str, Any]) -> str:
    """The Markdown model card of a bundle description (the content of ``bundle.json``)."""
    model, prep, cohort = spec["model"], spec["preprocessing"], spec["training_cohort"]
    cal, ev, qc, prov = spec["calibration"], spec["evaluation"], spec["qc"], spec["provenance"]
    modality = prep["modality"]
    score_lines, leak_lines = _scores_lines(ev.get("scores"))
    out = [
        f"# Model card: brain age, `{model['method']}` seed {model['seed']} ({modality})",
        "",
        f"Written by `brainage export` ({spec['created_by']}) from `bundle.json` in this folder, "
        f"bundle format {spec['format_version']}; every number below is recorded there.",
        "",
    ]
    if prov.get("synthetic_data"):
        out += [
            "> **Trained on simulated data** (`brainage simulate`). This model demonstrates the software: "
            "its predicted ages mean nothing for real scans.",
            "",
        ]
    out += _model_lines(spec) + _training_data_lines(cohort, prov)
    out += [
        "## Measured errors",
        "",
        "This bundle's predictions on the training cache's held-out splits (never used to train the network or "
        "the readout). The corrected gap uses the calibration below; for the internal test subjects, on whom it "
        "is fitted, each subject's line is fitted on the other folds (cross-fitted):",
        "",
    ]
    out += _errors_table(ev["bundle"]) + [""]
    if cal.get("slope") is not None:
        out += [
            f"Age-bias calibration: predicted = {cal['slope']:.4f} × age + {cal['intercept']:.3f}, fitted on the "
            f"{cal['fitted_on']}; corrected age = (predicted - {cal['intercept']:.3f}) / {cal['slope']:.4f}.",
            "",
        ]
    else:
        out += [f"No age-bias calibration: {cal.get('error')}. Predict leaves the corrected gap empty.", ""]
    out += score_lines + ["", "## Site leakage", ""] + leak_lines
    out += _misuse_lines(cohort, modality) + _qc_lines(qc)
    out += [
        "",
        "## Provenance",
        "",
        f"- Command: `{prov.get('command') or 'export_bundle() from Python'}`",
        f"- Run `{model['run']}` (`{prov['model_file']}`), cache fingerprint {prov.get('cache_fingerprint')}.",
        "",
    ]
    return "\n".join(out)


def _model_lines(spec: dict[str, Any]) -> list[str]:
    """Sections "Intended use", "Model" and "Input and preprocessing"."""
    model, prep = spec["model"], spec["preprocessing"]
    modality = prep["modality"]
    grid = prep["source_grid"]
    return [
        "## Intended use",
        "",
        f"Estimating the brain age (years) from a single {MODALITY_TEXT[modality]}, for research on groups: "
        "the brain-age gap (predicted minus chronological age) and its age-bias-corrected version. It is not a "
        "diagnostic device.",
        "",
        "## Model",
        "",
        f"- {METHOD_TEXT.get(model['method'], model['method'])}; `BrainAgeNet` "
        f"(width {spec['network']['kwargs']['widen_factor']:g}, {spec['network']['n_parameters']:,} parameters), "
        f"{model['epochs']} epochs, run `{model['run']}`.",
        f"- Readout: `{spec['readout']['kind']}` on the {spec['readout']['features']} "
        f"({spec['readout']['n_features']} features): {spec['readout']['rule']}.",
        "",
        "## Input and preprocessing",
        "",
        f"- Grid: {'×'.join(map(str, grid['shape']))} voxels of {'×'.join(f'{v:g}' for v in grid['voxel_size_mm'])} mm "
        f"in MNI152 space; images on another grid of that space are resampled (linear), others refused.",
        f"- Mask: {prep['source_mask']['rule']} ({prep['source_mask']['n_voxels']:,} voxels); voxels outside are "
        "set to 0.",
        f"- Block average by {prep['downsample']['factor']} to the network grid "
        f"{'×'.join(map(str, prep['model_grid']['shape']))}; normalisation `{prep['normalize']['method']}` "
        f"({prep['normalize']['rule']}); float16.",
        "",
    ]


def _training_data_lines(cohort: dict[str, Any], prov: dict[str, Any]) -> list[str]:
    """Section "Training data": ages (years), sites, sex, studies, the data's names and the age histogram."""
    age = cohort["age"]
    return [
        "## Training data",
        "",
        f"- {cohort['n']} subjects, ages {age['min']:.1f}-{age['max']:.1f} y (mean {age['mean']:.1f}, "
        f"sd {_num(age['std'], 1)}, median {age['median']:.1f}; 5-95 %: {age['q05']:.1f}-{age['q95']:.1f}).",
        f"- {cohort['sites']['n']} sites (`{cohort['sites']['column']}`)"
        + (f"; sex: {', '.join(f'{k} {v}' for k, v in cohort['sex'].items())}" if "sex" in cohort else "")
        + (f"; studies: {', '.join(f'{k} {v}' for k, v in cohort['studies'].items())}" if "studies" in cohort else "")
        + ".",
        f"- Data: `{prov.get('data')}` via the training cache `{prov['cache']}` (signature "
        f"{prov.get('cache_signature')}).",
        "",
        "| age (y) | "
        + " | ".join(
            f"{a:g}-{b:g}"
            for a, b in zip(cohort["age_histogram"]["edges"][:-1], cohort["age_histogram"]["edges"][1:], strict=True)
        )
        + " |",
        "| --- |" + " --- |" * len(cohort["age_histogram"]["counts"]),
        "| subjects | " + " | ".join(str(c) for c in cohort["age_histogram"]["counts"]) + " |",
        "",
    ]


def _misuse_lines(cohort: dict[str, Any], modality: str) -> list[str]:
    """Section "Where it must not be used" (after a blank line)."""
    age = cohort["age"]
    out = [
        "",
        "## Where it must not be used",
        "",
        f"- Outside the training age range, {age['min']:.1f}-{age['max']:.1f} y: predictions there are "
        "extrapolations (`brainage predict` flags such subjects).",
    ]
    sparse = _sparse_bins(cohort)
    if sparse:
        out.append(
            f"- With caution where training subjects were few (< {100 * SPARSE_BIN_FRACTION:g} % of the "
            f"cohort): {', '.join(sparse)}."
        )
    out += [
        f"- On anything but a {MODALITY_TEXT[modality]}: another modality, another preprocessing pipeline, "
        "or images not in MNI152 space (predict refuses rotated, off-centre and 4-D images, and flags images "
        "whose QC measures fall outside the training ranges).",
        "- On patients without care: the training subjects were healthy controls, so a gap in a patient group "
        "is a research finding, not a diagnosis.",
        "- On new sites without a check: the external-test error above is what unseen scanners cost; verify on "
        "a few subjects of known age from the new site.",
        "- For decisions about one person.",
        "",
    ]
    return out


def _qc_lines(qc: dict[str, Any]) -> list[str]:
    """Section "Quality control ranges (training subjects)" and the export's preprocessing check."""
    out = [
        "## Quality control ranges (training subjects)",
        "",
        "| measure | flagged when | training min | training max | n |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, ref in qc["reference"].items():
        side = "below min" if qc["rules"][name] == "below" else "outside [min, max]"
        out.append(f"| {name} | {side} | {_num(ref['min'], 4)} | {_num(ref['max'], 4)} | {ref['n']} |")
    check = qc.get("preprocessing_check") or {}
    out += [
        "",
        f"Preprocessing check at export: {check.get('n', 0)} training images run through this bundle's "
        f"preprocessing reproduce the training cache (max |difference| {_num(check.get('max_abs_difference'), 6)})."
        if check.get("n")
        else "Preprocessing check at export: not run (source images unavailable).",
    ]
    return out
