"""Table 2 layout and the privacy table, from evaluation records with known numbers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from brainage.debias.tables import privacy_table, records_frame, table2, write_tables


def _records():
    # two seeds per cell; accuracies chosen so that means and sample stds are easy by hand
    rows = []
    for method, rho, accs, attacks in [
        ("ce", 0.999, (0.10, 0.12), (0.99, 0.97)),
        ("ce", 0.99, (0.80, 0.90), (0.30, 0.20)),
        ("ce-end", 0.999, (0.50, 0.70), (0.15, 0.13)),
        ("eps-supinfonce-fairkl", 0.99, (0.96, 0.96), (0.12, 0.10)),
    ]:
        for seed, (acc, att) in enumerate(zip(accs, attacks, strict=True)):
            rows.append(
                {
                    "method": method,
                    "rho": rho,
                    "seed": seed,
                    "test_acc": acc,
                    "attacker_acc": att,
                    "ref_protocol_acc": acc + 0.05,
                }
            )
    return rows


def test_table2_cells():
    shown, numbers = table2(records_frame(_records()))
    assert list(shown.columns) == ["method", "0.999", "0.99"]
    assert shown["method"].tolist() == ["CE (vanilla)", "eps-SupInfoNCE + FairKL", "CE + EnD"]
    row = shown.set_index("method")
    # mean of 10, 12 = 11; sample std = |12 - 10| / sqrt(2) = 1.414
    assert row.loc["CE (vanilla)", "0.999"] == "11.0 +- 1.4"
    assert row.loc["CE (vanilla)", "0.99"] == "85.0 +- 7.1"
    assert row.loc["CE + EnD", "0.999"] == "60.0 +- 14.1"
    assert row.loc["CE + EnD", "0.99"] == ""
    assert row.loc["eps-SupInfoNCE + FairKL", "0.99"] == "96.0 +- 0.0"
    ce = numbers[(numbers.method == "ce") & (numbers.rho == 0.99)].iloc[0]
    # 80 and 90: mean 85, sample std |90 - 80| / sqrt(2)
    assert ce["mean"] == pytest.approx(85.0) and ce["std"] == pytest.approx(10 / 2**0.5) and ce["n"] == 2


def test_privacy_cells():
    shown, numbers = privacy_table(records_frame(_records()))
    assert shown["rho"].tolist() == ["0.999", "0.99"]
    row = shown.set_index("rho")
    assert row.loc["0.999", "CE (vanilla)"] == "98.0 / 11.0"
    assert row.loc["0.99", "CE (vanilla)"] == "25.0 / 85.0"
    assert row.loc["0.999", "CE + EnD"] == "14.0 / 60.0"
    assert row.loc["0.99", "eps-SupInfoNCE + FairKL"] == "11.0 / 96.0"


def test_single_seed_has_no_std():
    shown, _ = table2(
        records_frame([{"method": "ce", "rho": 0.997, "seed": 0, "test_acc": 0.625, "attacker_acc": 0.5}])
    )
    assert shown.iloc[0]["0.997"] == "62.5"


def test_write_tables(tmp_path):
    paths = write_tables(_records(), tmp_path, recipe_note="REDUCED recipe for the test")
    md = (tmp_path / "table2.md").read_text()
    assert "| CE (vanilla)" in md and "11.0 +- 1.4" in md
    assert "best test epoch" in md and "REDUCED recipe for the test" in md and "2 seed(s): 0, 1" in md
    assert "98.0 / 11.0" in (tmp_path / "privacy.md").read_text()
    numbers = pd.read_csv(tmp_path / "table2.csv")
    ref = numbers[(numbers.method == "ce") & (numbers.rho == 0.999)].iloc[0]
    assert ref["ref_protocol_mean"] == pytest.approx(16.0)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 8
    assert set(paths) == {"runs", "table2_csv", "privacy_csv", "table2_md", "privacy_md"}


def test_missing_fields():
    with pytest.raises(ValueError, match="attacker_acc"):
        records_frame([{"method": "ce", "rho": 0.99, "seed": 0, "test_acc": 0.5}])
    with pytest.raises(ValueError, match="no evaluation records"):
        records_frame([])


def test_table_step_reads_json(tmp_path):
    from brainage.debias.steps import table_step

    (tmp_path / "a.json").write_text(json.dumps(_records()[:4]))
    (tmp_path / "b.json").write_text(json.dumps(_records()[4:]))
    table_step([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "out")
    assert "60.0 +- 14.1" in (tmp_path / "out" / "table2.md").read_text()
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        table_step([tmp_path / "bad.json"], tmp_path / "out")
