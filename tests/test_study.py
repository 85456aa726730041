"""Paired statistics, seeds aggregation and the compare step's study report (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medrobust.errors import ConfigError
from medrobust.study.stats import aggregate_seeds, holm, paired_difference, pareto_front


def test_identical_method_gives_zero_difference_interval_with_zero_and_p_one():
    a = np.random.default_rng(0).uniform(0.5, 0.9, 25)
    r = paired_difference(a, a.copy(), n_resamples=500)
    assert r.diff == 0 and r.ci_low <= 0 <= r.ci_high and r.p_value == 1.0 and r.n == 25


def test_shifted_copy_is_detected_and_noise_is_not():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.4, 0.8, 30)
    shifted = a + 0.05 + rng.normal(0, 0.01, 30)
    r = paired_difference(a, shifted, n_resamples=2000)
    assert r.diff == pytest.approx(np.mean(shifted - a))
    assert 0 < r.ci_low < r.diff < r.ci_high and r.p_value < 1e-4
    down = paired_difference(a, a - 0.05, n_resamples=500)  # constant shift: degenerate interval at the shift
    assert down.ci_low == down.ci_high == pytest.approx(-0.05) and down.p_value < 1e-4
    noise = paired_difference(a, a + rng.normal(0, 0.05, 30), n_resamples=2000)
    assert noise.ci_low < 0 < noise.ci_high and noise.p_value > 0.05


def test_paired_difference_rejects_unpaired_input():
    with pytest.raises(ConfigError, match="same cases"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError, match="NaN"):
        paired_difference([1.0, np.nan], [1.0, 2.0])


def test_holm_on_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04; running max -> 0.02, 0.03, 0.06, 0.06
    adj = holm([0.01, 0.04, 0.03, 0.005, np.nan])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and np.isnan(adj[4])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5 * 2 capped at 1; 0.9 * 1 raised to the running max


def test_pareto_front():
    clean = [0.9, 0.8, 0.7, 0.85, np.nan]
    robust = [0.1, 0.5, 0.4, 0.5, 0.9]
    assert pareto_front(clean, robust).tolist() == [True, False, False, True, False]


def test_seeds_are_aggregated_as_stated():
    d = pd.DataFrame({"seed": [0, 0, 1, 1], "case": ["a", "b", "a", "b"], "score": [0.5, 0.7, 0.7, 0.9]})
    agg, by_case = aggregate_seeds(d)
    assert agg["mean"] == pytest.approx(0.7) and agg["sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert agg["n_seeds"] == 2 and agg["n_cases"] == 2
    assert by_case.to_dict() == pytest.approx({"a": 0.6, "b": 0.8})
    with pytest.raises(ConfigError, match="different cases"):
        aggregate_seeds(pd.DataFrame({"seed": [0, 1], "case": ["a", "b"], "score": [0.5, 0.6]}))


# ---------------------------------------------------------------------------- compare step
def _fake_eval(d: Path, clean: np.ndarray, robust: np.ndarray) -> str:
    """An evaluation folder of 2D images (one sample per case) with clean and one attack at budget 0.1."""
    d.mkdir(parents=True)
    rows = []
    for i, (c, r) in enumerate(zip(clean, robust)):
        for att, b, v in (("clean", 0.0, c), ("pgd", 0.1, r)):
            rows.append({"sample": f"c{i}", "case": f"c{i}", "slice": -1, "attack": att, "budget": b, "dice": v,
                         "tp_1": 1, "fp_1": 0, "fn_1": 0})
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    blk = lambda v: {"dice": {"mean": float(np.mean(v)), "sd": float(np.std(v)), "median": float(np.median(v))},  # noqa: E731
                     "pooled_dice_mean": float(np.mean(v))}
    summary = {"task": "segmentation", "clean": blk(clean), "attacks": {"pgd": {"0.1": blk(robust)}},
               "worst_case": {"0.1": blk(robust)}, "settings": {"norm": "L2", "units": "rms"}}
    (d / "summary.json").write_text(json.dumps(summary))
    return str(d)


def test_compare_writes_paired_statistics_and_a_verdict(tmp_path: Path):
    from medrobust.evaluation.compare import CompareConfig, run_compare

    rng = np.random.default_rng(0)
    n = 20
    base = [rng.uniform(0.6, 0.9, n) for _ in range(2)]  # two seeds of the reference
    rob = [rng.uniform(0.1, 0.4, n) for _ in range(2)]
    evals = {
        "standard": [_fake_eval(tmp_path / f"std{s}", base[s], rob[s]) for s in range(2)],
        "same": [_fake_eval(tmp_path / f"same{s}", base[s], rob[s]) for s in range(2)],
        "robust": [_fake_eval(tmp_path / f"rob{s}", base[s] - 0.02, rob[s] + 0.3 + rng.normal(0, 0.02, n)) for s in range(2)],
    }
    cfg = CompareConfig(evals=evals, output_dir=str(tmp_path / "cmp"), n_resamples=1000)
    t = run_compare(cfg, tmp_path).table
    for col in ("ci_low", "ci_high", "p_value", "p_holm", "pareto", "diff", "robust_mean", "robust_sd", "n_seeds"):
        assert col in t.columns
    csv = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert {"ci_low", "ci_high", "p_value", "p_holm", "pareto"} <= set(csv.columns)
    same = t[(t.method == "same") & (t.budget == 0.1)].iloc[0]
    assert same["diff"] == 0 and same.ci_low <= 0 <= same.ci_high and same.p_value == 1.0 and same.p_holm == 1.0
    rb = t[(t.method == "robust") & (t.budget == 0.1)].iloc[0]
    assert rb.ci_low > 0.25 and rb.p_holm < 0.05 and bool(rb.pareto)
    # seeds: mean +- sd over seeds of the case means; the paired test sees each case averaged over seeds
    seed_means = [np.mean(rob[s] + 0.0) for s in range(2)]
    std = t[(t.method == "standard") & (t.budget == 0.1)].iloc[0]
    assert std.robust_mean == pytest.approx(np.mean(seed_means)) and std.robust_sd == pytest.approx(np.std(seed_means, ddof=1))
    assert std.n_seeds == 2 and std.n_cases == n
    per_case = pd.read_csv(tmp_path / "cmp" / "per_case.csv")
    assert len(per_case) == 3 * 2 * n * 1
    report = (tmp_path / "cmp" / "study_report.html").read_text()
    assert report.index("Verdict") < report.index("<table>")
    verdict = json.loads((tmp_path / "cmp" / "verdict.json").read_text())["0.1"]
    assert "robust" in verdict.split("Better than standard:")[1] and "Not distinguishable from standard: same" in verdict
    for f in ("pareto.png", "forest.png", "comparison.md"):
        assert (tmp_path / "cmp" / f).is_file()
    with pytest.raises(ConfigError, match="reference"):
        run_compare(CompareConfig(evals=evals, reference="nope", output_dir=str(tmp_path / "c2")), tmp_path)


# ---------------------------------------------------------------------------- seeds in pipelines
@pytest.mark.slow
def test_pipeline_seeds_repeat_steps_and_feed_compare_lists(tmp_path: Path):
    import yaml

    from conftest import tiny_train_config
    from medrobust.pipelines import run_pipeline

    train = tiny_train_config(tmp_path, epochs=1, data={"phantom": {"n_cases": 10, "size": [24, 24]}, "preprocess": {"size": [24, 24]}},
                              model={"params": {"channels": [4, 8], "strides": [2]}}, threat={"norm": "L2"})
    del train["output_dir"]
    adv = dict(train, method={"name": "pgd_at", "eps": 0.1, "units": "rms", "steps": 1}, budget={"passes": 8})
    ev = {"split": "test", "examples": 0, "threat": {"norm": "L2", "units": "rms", "budgets": [0.0, 0.1]},
          "attacks": [{"name": "pgd", "steps": 1}]}
    spec = {"name": "seeds", "output_dir": "out", "seeds": [3, 4], "steps": [
        {"id": "tr_std", "command": "train-seg", "config": train},
        {"id": "tr_adv", "command": "train-seg", "config": adv},
        {"id": "ev_std", "command": "eval-seg", "config": dict(ev, checkpoint="${tr_std.best_checkpoint}")},
        {"id": "ev_adv", "command": "eval-seg", "config": dict(ev, checkpoint="${tr_adv.best_checkpoint}")},
        {"id": "cmp", "command": "compare", "config": {"evals": {"standard": "${ev_std.run_dir}", "pgd_at": "${ev_adv.run_dir}"},
                                                       "trains": {"standard": "${tr_std.run_dir}", "pgd_at": "${tr_adv.run_dir}"},
                                                       "n_resamples": 200}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    out = run_pipeline(tmp_path / "p.yaml", echo=lambda s: None)
    assert out["tr_adv"]["run_dir"] == [str(tmp_path / "out" / "tr_adv" / f"seed{s}") for s in (3, 4)]
    for s in (3, 4):
        cfg = yaml.safe_load((tmp_path / "out" / "tr_std" / f"seed{s}" / "config.yaml").read_text())
        assert cfg["seed"] == s
        # each seed's evaluation used that seed's checkpoint
        summ = json.loads((tmp_path / "out" / "ev_adv" / f"seed{s}" / "summary.json").read_text())
        assert summ["settings"]["checkpoint"] == str(tmp_path / "out" / "tr_adv" / f"seed{s}" / "best.pt")
    t = pd.read_csv(tmp_path / "out" / "cmp" / "comparison.csv")
    assert set(t.n_seeds) == {2}
    adv_row = t[(t.method == "pgd_at") & (t.budget == 0.1)].iloc[0]
    assert adv_row.select_metric == "val_robust_dice"
    assert adv_row.passes_train >= 8 and adv_row.passes_train < 8 + 2 * 4 * 2  # stopped within a step of the budget
    assert adv_row.passes_val_attack > 0
    per_case = pd.read_csv(tmp_path / "out" / "cmp" / "per_case.csv")
    seed_means = per_case[(per_case.method == "pgd_at") & (per_case.budget == 0.1)].groupby("seed").robust.mean()
    assert adv_row.robust_mean == pytest.approx(seed_means.mean())
    assert adv_row.robust_sd == pytest.approx(seed_means.std(ddof=1))


def test_per_seed_references_become_lists_or_fail_clearly():
    from medrobust.pipelines import _interpolate

    outs = {"ev": {"run_dir": ["a/seed0", "a/seed1"]}, "tr": {"run_dir": "t"}}
    assert _interpolate({"evals": {"m": "${ev.run_dir}"}, "x": "${tr.run_dir}/y"}, outs, "cmp") == \
        {"evals": {"m": ["a/seed0", "a/seed1"]}, "x": "t/y"}
    with pytest.raises(ConfigError, match="runs once per seed"):
        _interpolate("${ev.run_dir}/results.csv", outs, "cmp")


def test_case_scores_worst_case_and_slice_pooling(tmp_path: Path):
    from medrobust.study.cases import case_scores

    # classification: per image, worst case over two attacks
    d = tmp_path / "cls"
    d.mkdir()
    rows = [("i0", "clean", 0.0, True), ("i1", "clean", 0.0, True),
            ("i0", "a", 0.1, True), ("i0", "b", 0.1, False), ("i1", "a", 0.1, True), ("i1", "b", 0.1, True)]
    pd.DataFrame([{"sample": s, "case": s, "slice": -1, "attack": a, "budget": b, "correct": c} for s, a, b, c in rows]).to_csv(d / "results.csv", index=False)
    (d / "summary.json").write_text(json.dumps({"task": "classification"}))
    cs = case_scores(d).set_index("case")
    assert cs.loc["i0", "robust"] == 0.0 and cs.loc["i1", "robust"] == 1.0 and (cs.clean == 1.0).all()
    assert case_scores(d, attack="a").robust.tolist() == [1.0, 1.0]
    # segmentation, 2D slices of one case: TP / FP / FN pooled over the slices (not a mean of slice Dice)
    s = tmp_path / "seg"
    s.mkdir()
    seg = [{"sample": f"c:{k}", "case": "c", "slice": k, "attack": "clean", "budget": 0.0, "dice": v, "tp_1": tp, "fp_1": fp, "fn_1": fn}
           for k, (v, tp, fp, fn) in enumerate([(1.0, 90, 0, 0), (0.0, 0, 10, 0)])]
    pd.DataFrame(seg).to_csv(s / "results.csv", index=False)
    (s / "summary.json").write_text(json.dumps({"task": "segmentation"}))
    assert case_scores(s).clean.iloc[0] == pytest.approx(2 * 90 / (2 * 90 + 10))
