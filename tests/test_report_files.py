"""The report's files from a small synthetic results table: plots are drawn for every attack, the
examples of the strongest attack are named, and the HTML report carries the summary numbers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from medrobust.evaluation.report import plot_examples, summarize, summary_table, write_report
from test_oracles_metrics import _seg_table


def test_write_report_draws_every_file_and_names_the_strongest_attack(tmp_path: Path):
    t = _seg_table()
    info = SimpleNamespace(task="segmentation", num_classes=3, label_map={0: "background", 1: "organ_a", 2: "organ_b"})
    s = summarize(t, None, info, [0.5, 1.0], ["pgd", "noise"], ["a flag"])
    s["settings"] = {"checkpoint": "ck.pt", "split": "val", "n_samples": 6, "norm": "L2", "budgets": [0.5, 1.0], "units": "rms",
                     "bounds": None}
    img = torch.rand(1, 8, 8)
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[0, 2:5, 2:5] = 1
    item = {"id": "A_0", "image": img, "adv": img + 0.1, "label": lab, "pred_clean": lab[0], "pred_adv": torch.zeros(8, 8, dtype=torch.long),
            "metric_adv": 0.0, "budget": 1.0}
    cfg = SimpleNamespace(threat=SimpleNamespace(units="rms", norm="L2"))
    files = write_report(tmp_path, t, s, {"pgd": [item], "noise": [item]}, info, cfg)
    for key in ("curve", "per_class", "distributions", "examples:pgd", "examples:noise", "report"):
        assert (tmp_path / files[key]).is_file(), key
    # pgd lowers Dice more than noise at the largest budget in this table
    assert s["attacks"]["pgd"]["1.0"]["dice"]["mean"] < s["attacks"]["noise"]["1.0"]["dice"]["mean"]
    assert files["examples_strongest"] == "examples_pgd.png"
    html = (tmp_path / "report.html").read_text()
    assert "a flag" in html and f"{s['clean']['dice']['mean']:.4f}" in html and "examples_pgd.png" in html
    # 3D examples: the middle of the structure is shown
    vol = torch.rand(1, 6, 6, 5)
    lab3 = torch.zeros(1, 6, 6, 5, dtype=torch.long)
    lab3[0, 1:4, 1:4, 3] = 2
    plot_examples([{**item, "image": vol, "adv": vol, "label": lab3, "pred_clean": lab3[0], "pred_adv": lab3[0]}], tmp_path / "e3.png", 3, True, "pgd")
    assert (tmp_path / "e3.png").is_file()
    assert np.isfinite(s["auc"]["pgd"]) and "normalised area" in summary_table(s)


def test_classification_report(tmp_path: Path):
    rows = []
    for attack, b in (("clean", 0.0), ("fgsm", 0.1)):
        for i in range(4):
            p0 = [0.9, 0.2, 0.7, 0.4][i] - (0.3 if attack == "fgsm" else 0.0)
            y = [0, 1, 0, 1][i]
            rows.append({"sample": f"s{i}", "case": f"s{i}", "slice": -1, "attack": attack, "budget": b, "label": y,
                         "pred": int(p0 <= 0.5), "correct": int(p0 <= 0.5) == y, "margin": 0.1, "prob_0": p0, "prob_1": 1 - p0})
    t = pd.DataFrame(rows)
    info = SimpleNamespace(task="classification", num_classes=2, label_map={0: "a", 1: "b"})
    s = summarize(t, None, info, [0.1], ["fgsm"], [])
    s["settings"] = {}
    img = torch.rand(1, 8, 8)
    item = {"id": "s0", "image": img, "adv": img, "label": torch.tensor(0), "pred_adv": 1, "metric_adv": 0.0, "budget": 0.1}
    cfg = SimpleNamespace(threat=SimpleNamespace(units="input", norm="Linf"))
    files = write_report(tmp_path, t, s, {"fgsm": [item]}, info, cfg)
    assert files["examples_strongest"] == "examples_fgsm.png" and (tmp_path / "examples_fgsm.png").is_file()
    assert "per_class" not in files and (tmp_path / files["distributions"]).is_file()
    assert s["attacks"]["fgsm"]["0.1"]["accuracy"] == 0.75 and s["clean"]["accuracy"] == 1.0
