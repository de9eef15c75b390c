"""Result tables in the layout of the seed paper's Table 2 and of the privacy table.

- Table 2 (Barbano et al., Ital-IA 2023; from ICLR 2023): rows = methods, columns = rho,
  cells = unbiased-test accuracy (%) ``mean +- std`` over seeds.
- Privacy (Barbano et al., ICCVW 2021): rows = rho, columns = methods,
  cells = ``attacker / target`` accuracy (%).

Input: the evaluation records written by ``brainage debias-eval`` (one dict per trained
model). Every table is written as CSV (numbers) and Markdown (formatted, with the protocol
notes), atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage.errors import BrainAgeError
from brainage.io import check_fields

from .methods import METHOD_LABELS, METHODS

__all__ = ["check_record", "records_frame", "table2", "privacy_table", "write_tables", "PROTOCOL_NOTE"]

PROTOCOL_NOTE = (
    "Test accuracy at the epoch with the best validation accuracy (validation = held-out "
    "training digits recoloured at rho = 0.1, never the test set). The reference code of "
    "ReBias/EnD/FairKL reported the best test epoch instead; that optimistic number is in the "
    "column `ref_protocol_acc` of the CSV for comparison only."
)


#: The fields of an evaluation record the tables read, and their kinds (see :func:`brainage.io.check_fields`).
RECORD_FIELDS = {
    "method": "string",
    "rho": "number",
    "seed": "integer",
    "test_acc": "number",
    "attacker_acc": "number",
    "ref_protocol_acc": "number",
}
#: Fields every record must have, not null but ``attacker_acc`` (null without an attacker split).
REQUIRED_FIELDS = ("method", "rho", "seed", "test_acc", "attacker_acc")


def check_record(record: Any, source: str) -> dict:
    """``record`` when it is an evaluation record the tables can read; ``source`` names it in errors."""
    if not isinstance(record, dict):
        raise BrainAgeError(
            f"{source}: {str(record)[:60]!r} is not an evaluation record; expected a JSON object written by "
            "`brainage debias-eval`"
        )
    missing = [k for k in REQUIRED_FIELDS if record.get(k) is None and (k != "attacker_acc" or k not in record)]
    if missing:
        raise BrainAgeError(f"{source}: the evaluation record lacks {missing} (or has null there)")
    return check_fields(record, RECORD_FIELDS, source)


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per trained model; accuracies in percent."""
    if not records:
        raise BrainAgeError("no evaluation records")
    frame = pd.DataFrame.from_records(records)
    needed = {"method", "rho", "seed", "test_acc", "attacker_acc"}
    missing = needed - set(frame.columns)
    if missing:
        raise BrainAgeError(f"evaluation records lack {sorted(missing)}")
    return frame


def _method_order(methods) -> list[str]:
    known = [m for m in METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=float) * 100.0
    std = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
    return float(np.mean(v)), std, int(v.size)


def _cell(mean: float, std: float) -> str:
    return f"{mean:.1f}" if np.isnan(std) else f"{mean:.1f} +- {std:.1f}"


def table2(frame: pd.DataFrame, value: str = "test_acc") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 layout.

    Returns:
        ``(formatted, numbers)``: ``formatted`` has one row per method and one column per rho
        (descending) with ``"mean +- std"`` strings; ``numbers`` is the long table
        (method, rho, mean, std, n) in percent. The std is the sample standard deviation over
        seeds (ddof = 1).
    """
    rhos = sorted(frame["rho"].unique(), reverse=True)
    rows, numbers = [], []
    for method in _method_order(frame["method"].unique()):
        row = {"method": METHOD_LABELS.get(method, method)}
        for rho in rhos:
            sel = frame[(frame["method"] == method) & (frame["rho"] == rho)][value]
            if sel.empty:
                row[f"{rho:g}"] = ""
                continue
            mean, std, n = _mean_std(sel)
            row[f"{rho:g}"] = _cell(mean, std)
            numbers.append({"method": method, "rho": rho, "mean": mean, "std": std, "n": n})
        rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(numbers)


def privacy_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Privacy table layout: rows rho (descending), columns methods, ``"attacker / target"`` (%)."""
    rhos = sorted(frame["rho"].unique(), reverse=True)
    methods = _method_order(frame["method"].unique())
    rows, numbers = [], []
    for rho in rhos:
        row = {"rho": f"{rho:g}"}
        for method in methods:
            sel = frame[(frame["method"] == method) & (frame["rho"] == rho)]
            label = METHOD_LABELS.get(method, method)
            if sel.empty:
                row[label] = ""
                continue
            att, att_std, n = _mean_std(sel["attacker_acc"])
            tgt, tgt_std, _ = _mean_std(sel["test_acc"])
            row[label] = f"{att:.1f} / {tgt:.1f}"
            numbers.append(
                {
                    "rho": rho,
                    "method": method,
                    "attacker_mean": att,
                    "attacker_std": att_std,
                    "target_mean": tgt,
                    "target_std": tgt_std,
                    "n": n,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(numbers)


def _markdown(title: str, table: pd.DataFrame, notes: list[str]) -> str:
    lines = [f"## {title}", "", table.to_markdown(index=False), ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_tables(records: list[dict], out_dir: str | os.PathLike, recipe_note: str = "") -> dict[str, Path]:
    """Write ``table2.{csv,md}``, ``privacy.{csv,md}`` and ``runs.csv`` (one row per model).

    Args:
        records: evaluation records.
        out_dir: destination folder.
        recipe_note: a line describing the training recipe (e.g. the reduced default).

    Returns:
        name -> path of every file written.
    """
    from brainage.io import atomic_open, save_table

    out_dir = Path(out_dir)
    frame = records_frame(records)
    seeds = sorted(frame["seed"].unique())
    shown, numbers = table2(frame)
    privacy, privacy_numbers = privacy_table(frame)
    if "ref_protocol_acc" in frame.columns:
        _, ref_numbers = table2(frame, "ref_protocol_acc")
        numbers = numbers.merge(
            ref_numbers.rename(columns={"mean": "ref_protocol_mean", "std": "ref_protocol_std"}).drop(columns="n"),
            on=["method", "rho"],
            how="left",
        )
    paths = {
        "runs": save_table(out_dir / "runs.csv", frame.sort_values(["method", "rho", "seed"])),
        "table2_csv": save_table(out_dir / "table2.csv", numbers),
        "privacy_csv": save_table(out_dir / "privacy.csv", privacy_numbers),
    }
    common = [f"{len(seeds)} seed(s): {', '.join(str(s) for s in seeds)}; mean +- sample std."]
    if recipe_note:
        common.append(recipe_note)
    notes2 = ["Unbiased-test accuracy (%) on Biased-MNIST, rho = fraction of bias-aligned training samples."]
    notes2 += [PROTOCOL_NOTE] + common
    notes_p = [
        "attacker / target accuracy (%) on the unbiased test split; attacker = logistic regression "
        "on the frozen features predicting the background colour (chance 10 %), fitted on the "
        "validation split.",
    ] + common
    for key, title, table, notes in (
        ("table2_md", "Table 2 layout: unbiased test accuracy", shown, notes2),
        ("privacy_md", "Privacy: attacker / target accuracy", privacy, notes_p),
    ):
        path = out_dir / ("table2.md" if key == "table2_md" else "privacy.md")
        with atomic_open(path, "w") as fh:
            fh.write(_markdown(title, table, notes))
        paths[key] = path
    return paths
