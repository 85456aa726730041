"""Fidelity fixes of issue #8: each test pins one behaviour a review found wrong or undocumented."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from medrobust.attacks import build_attack
from medrobust.tasks import ClassificationTask
from medrobust.threat import ThreatModel


# ---------------------------------------------------------------- 6: AutoAttack APGD schedule
@pytest.mark.parametrize("n_iter", [20, 100, 250])
def test_autoattack_apgd_schedule_follows_apgd_iter(n_iter):
    from medrobust.attacks.autoattack import AutoAttackParams, build_reference

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    for n_classes in (2, 3, 4, 10):
        p = AutoAttackParams(apgd_iter=n_iter, seed=0)
        adv, chosen, _ = build_reference(model, p, n_classes, "Linf", 0.03, "cpu")
        for a in (adv.apgd, adv.apgd_targeted):
            assert a.n_iter == a.n_iter_orig == n_iter
            assert a.n_iter_2 == max(int(0.22 * n_iter), 1)
            assert a.n_iter_min == max(int(0.06 * n_iter), 1)
            assert a.size_decr == max(int(0.03 * n_iter), 1)
        # restarts and targets of the version survive the rebuild
        assert adv.apgd.n_restarts == 1
        if n_classes >= 4:
            assert adv.apgd_targeted.n_target_classes == min(9, n_classes - 1)


# ---------------------------------------------------------------- 7: one-sided white noise
def test_one_sided_l2_noise_is_uniform_rescaled_like_the_ima_code():
    """IMA's ``rand_uniform_attack``: U[0, 1] per voxel rescaled to the L2 radius; |N(0, 1)| is not that."""
    from medrobust.threat import lp_norm

    atk = build_attack({"name": "white_noise", "draws": 1, "one_sided": True}, ClassificationTask(2), ThreatModel("L2", None))
    x = torch.zeros(4, 1, 64, 64)
    eps = torch.full((4,), 2.0)
    torch.manual_seed(0)
    d = atk.sample(x, eps)
    assert torch.allclose(lp_norm(d, "L2"), eps, rtol=1e-5)
    assert bool((d >= 0).all())
    flat = d.reshape(4, -1)
    # U[0, 1]: max / mean -> 2; |N(0, 1)| over 4096 voxels: max / mean ~ 4.5
    ratio = flat.max(1).values / flat.mean(1)
    assert bool((ratio < 2.05).all()) and bool((ratio > 1.9).all()), ratio


# ---------------------------------------------------------------- 8: ensemble labels and seed
def test_ensemble_members_with_same_label_keep_separate_columns_and_seed_null_works():
    from medrobust.errors import ConfigError
    from models_fixtures import TinySeg

    from medrobust.tasks import SegmentationTask

    task, threat = SegmentationTask(3), ThreatModel("Linf", (0.0, 1.0))
    members = [{"name": "pgd", "steps": 1}, {"name": "pgd", "steps": 2}, {"name": "pgd", "steps": 3}]
    ens = build_attack({"name": "ensemble", "members": members}, task, threat)
    labels = [m.label for m in ens.members]
    assert len(set(labels)) == 3, labels
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 16, 16), torch.randint(0, 3, (2, 1, 16, 16))
    res = ens(TinySeg(2).eval(), x, y, 0.05)
    assert len([k for k in res.extra if k.startswith("member:")]) == 3
    ens_null = build_attack({"name": "ensemble", "members": members, "seed": None}, task, threat)
    assert all(m.params.seed is None for m in ens_null.members)
    ens_null(TinySeg(2).eval(), x, y, 0.05)
    with pytest.raises(ConfigError, match="unique label"):
        build_attack({"name": "ensemble", "members": [{"name": "pgd", "label": "a"}, {"name": "fgsm", "label": "a"}]}, task, threat)


# ---------------------------------------------------------------- 9: pipeline outputs from one place
def test_skipped_pipeline_steps_get_the_outputs_their_commands_write(tmp_path):
    """Under --only, a skipped step's outputs are the ones its command's result object reports."""
    import pandas as pd

    from medrobust.evaluation.compare import CompareResult
    from medrobust.evaluation.sweep import EvalResult
    from medrobust.margins.run import MarginsResult
    from medrobust.pipelines import _predicted_outputs
    from medrobust.training.engine import TrainResult

    d = tmp_path / "pipelines" / ".." / "runs" / "step"
    norm = tmp_path / "runs" / "step"
    real = {
        "train-seg": TrainResult(norm, norm / "best.pt", norm / "last.pt", [], 0.0),
        "eval-classify": EvalResult(norm, pd.DataFrame(), {}),
        "margins": MarginsResult(norm, pd.DataFrame(), {}),
        "compare": CompareResult(norm, pd.DataFrame()),
    }
    for cmd, res in real.items():
        pred = _predicted_outputs(cmd, {"output_dir": str(d)}, tmp_path)
        assert pred == res.outputs(), cmd
    assert _predicted_outputs("margins", {"output_dir": "x"}, tmp_path)["results"].endswith("margins.csv")
    assert _predicted_outputs("compare", {"output_dir": "x"}, tmp_path)["results"].endswith("comparison.csv")
    assert "report" in _predicted_outputs("eval-seg", {"output_dir": "x"}, tmp_path)
    # relative output_dir with '..' is normalised (printed paths read /.../runs, not pipelines/../runs)
    assert ".." not in _predicted_outputs("eval-seg", {"output_dir": "../runs/e"}, tmp_path / "pipelines")["run_dir"]


# ---------------------------------------------------------------- 4: AWP official values per base
def test_awp_defaults_are_the_official_values_per_base_method():
    from pathlib import Path

    from medrobust.config import load_yaml
    from medrobust.training.base import build_method, method_summary

    task, threat = ClassificationTask(3), ThreatModel("Linf", (0.0, 1.0))
    at = build_method({"name": "awp", "base": "pgd_at"}, task, threat, None)
    tr = build_method({"name": "awp", "base": {"name": "trades"}}, task, threat, None)
    assert (at.gamma, at.warmup_epochs) == (1e-2, 0)  # at-awp/train_cifar10.py
    assert (tr.gamma, tr.warmup_epochs) == (5e-3, 10)  # trades-awp/train_trades_cifar.py
    own = build_method({"name": "awp", "base": "trades", "gamma": 0.002, "warmup_epochs": 0}, task, threat, None)
    assert (own.gamma, own.warmup_epochs) == (0.002, 0)
    assert method_summary(tr)["options"] == {"gamma": 5e-3, "warmup_epochs": 10}
    cfg = load_yaml(Path(__file__).parents[1] / "configs" / "methods" / "awp_trades.yaml")
    assert (cfg["gamma"], cfg["warmup_epochs"]) == (0.005, 10)


# ---------------------------------------------------------------- 5: orthogonality penalty as Wu & Yu
def test_orthogonality_penalty_is_w_wt_minus_identity_of_out_always():
    from medrobust.training.common import orthogonality_penalty

    lin = nn.Linear(2, 3, bias=False)  # out 3 > in 2
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    # W W^T = diag(1, 1, 0): official ||W W^T - I_3||^2 = 1; W^T W = I_2 would give 0
    assert float(orthogonality_penalty(lin)) == pytest.approx(1.0)
    assert float(orthogonality_penalty(lin, "smaller")) == pytest.approx(0.0)
    conv = nn.Conv2d(1, 2, 1, bias=False)  # (2, 1): out > in * k
    with torch.no_grad():
        conv.weight.fill_(1.0)
    # W W^T = [[1, 1], [1, 1]] -> ||.-I||^2 = 2
    assert float(orthogonality_penalty(conv)) == pytest.approx(2.0)


# ---------------------------------------------------------------- 1: BatchNorm + train-mode success tests
def _ima(task, threat, **kw):
    from medrobust.training.base import build_method

    spec = {"name": "ima", "delta": 0.1, "eps_max": 20.0, "steps": 2, "bisection_steps": 2, **kw}
    return build_method(spec, task, threat, None)


def test_batch_coupling_flags_name_batchnorm_and_spare_instance_and_group_norm():
    from medrobust.training.batchnorm import batch_coupled, batch_coupling_flags, mode_dependent

    task, threat = ClassificationTask(2), ThreatModel("L2", (0.0, 1.0))
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    inst = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    grp = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(2))
    official = _ima(task, threat, attack_mode="train", success_mode="train")
    default = _ima(task, threat)
    assert default.params.success_mode == "eval"
    f = batch_coupling_flags(official, bn)
    assert len(f) == 1 and f[0].startswith("batchnorm_train_mode_success: ima")
    f = batch_coupling_flags(default, bn)  # success decoupled; the official train-mode attack is still named
    assert len(f) == 1 and f[0].startswith("batchnorm_train_mode_attack: ima")
    for m in (inst, grp):
        assert not batch_coupled(m, "train") and batch_coupling_flags(official, m) == []
    assert mode_dependent(bn) and not mode_dependent(grp)
    no_stats = nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False))
    assert batch_coupled(no_stats, "eval")  # batch statistics in eval mode too
    from medrobust.training.base import build_method

    iaat = build_method({"name": "iaat", "success_mode": "train"}, task, threat, None)
    assert batch_coupling_flags(iaat, bn)[0].startswith("batchnorm_train_mode_success: iaat")
    awp = build_method({"name": "awp", "base": {"name": "pgd_at"}}, task, threat, None)
    assert batch_coupling_flags(awp, bn)[0].startswith("batchnorm_train_mode_attack: pgd_at")


@pytest.mark.slow
def test_train_mode_success_tests_cross_at_zero_margin_with_batchnorm_and_eval_mode_does_not():
    """MONAI ResNet-10 at initialisation, a batch of 70: half the samples keep margin 0 (input unchanged)
    while the others are perturbed; in train mode BatchNorm records some of the unchanged ones as
    crossed, in eval mode (the default) none."""
    from medrobust.attacks.base import model_mode
    from medrobust.models import build_model, resolve_spec

    torch.manual_seed(0)
    model = build_model(resolve_spec("resnet10", 2, 1, 2, "classification", {}))
    task, threat = ClassificationTask(2), ThreatModel("L2", (0.0, 1.0))
    x = torch.rand(70, 1, 28, 28)
    zero = torch.arange(70) % 2 == 0
    E = torch.where(zero, torch.tensor(0.0), torch.tensor(10.0))
    counts = {}
    for name, kw in {"official": {"success_mode": "train"}, "default": {}}.items():
        ima = _ima(task, threat, attack_mode="train", **kw)
        ima.setup(type("State", (), {"register": lambda *a: None})(), model)
        with torch.no_grad(), model_mode(model, ima.params.success_mode):
            y = model(x).argmax(1)  # every clean sample correct in the mode it is judged in
        torch.manual_seed(1)
        with model_mode(model, "train"):
            _, advc = ima._attack(model, x, y, E, torch.full((70,), 0.1), threat.limits(x))
        counts[name] = int((advc[zero] > 0).sum())
    assert counts["official"] >= 3, counts  # measured: 12 of 35 (seed 0)
    assert counts["default"] == 0, counts


# ---------------------------------------------------------------- 2: IMA bisects the whole batch
def test_ima_bisection_runs_on_the_whole_batch():
    """The official code bisects every sample of the batch; train-mode BatchNorm then sees the batch of the PGD."""
    task, threat = ClassificationTask(2), ThreatModel("L2", None)
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        lin.bias.zero_()
    sizes = []
    lin.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    x = torch.tensor([[0.1, 0.0], [0.1, 0.0], [0.1, 0.0], [0.5, 0.0]])
    y = torch.ones(4, dtype=torch.long)
    E = torch.tensor([1.0, 0.01, 1.0, 0.01])  # samples 0 and 2 can cross x0 = 0, samples 1 and 3 cannot
    ima = _ima(task, threat, attack_mode="eval", steps=10, bisection_steps=8, attack_loss="ce")
    torch.manual_seed(0)
    out, advc = ima._attack(lin, x, y, E, torch.full((4,), 0.01), None)
    assert (advc > 0).tolist() == [True, False, True, False]
    assert set(sizes) == {4}, sizes  # every pass, bisection included, sees the whole batch
    assert torch.allclose(out[[0, 2], 0], torch.zeros(2), atol=0.02)  # crossed: on the boundary x0 = 0


# ---------------------------------------------------------------- 3: IMA empty ground truth
def test_ima_empty_ground_truth_rule_is_an_option():
    from medrobust.tasks import SegmentationTask

    task, threat = SegmentationTask(2), ThreatModel("L2", None)
    y = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    y[1, 0, :2, :2] = 1
    logits = torch.zeros(2, 2, 4, 4)
    logits[:, 0] = 1.0  # predict background everywhere ...
    logits[1, 1, :2, :2] = 2.0  # ... except the foreground of sample 1
    ours = _ima(task, threat).judge.success(logits, y)
    official = _ima(task, threat, empty_dice="zero").judge.success(logits, y)
    assert ours.tolist() == [True, True]  # empty truth, empty prediction: Dice 1
    assert official.tolist() == [False, True]  # getOnlineDiceMax: Dice 0


# ---------------------------------------------------------------- 11: progress in logs and terminals
class _Stream:
    def __init__(self, tty: bool) -> None:
        self.text, self.tty = "", tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_progress_writes_one_line_per_pass_when_not_a_terminal_and_a_bar_in_one(monkeypatch):
    import sys

    from medrobust.utils import progress

    monkeypatch.setenv("MEDROBUST_NO_PROGRESS", "0")
    piped = _Stream(False)
    monkeypatch.setattr(sys, "stderr", piped)
    for epoch in range(3):
        bar = progress(range(11), total=11, desc=f"epoch {epoch + 1}/3")
        for i in bar:
            bar.set_postfix(loss=f"{1.0 / (i + 1):.4f}")
    lines = piped.text.splitlines()
    assert len(lines) == 3, lines  # one per pass, not one per update
    assert lines[0].startswith("epoch 1/3: 11/11 in") and "loss=0.0909" in lines[0]
    quiet = _Stream(False)
    monkeypatch.setattr(sys, "stderr", quiet)
    assert list(progress(range(5), line=False)) == list(range(5)) and quiet.text == ""  # the engine logs its own line
    manual = _Stream(False)  # the sweep's use: next() per work item, then close()
    monkeypatch.setattr(sys, "stderr", manual)
    bar = progress(range(6), total=6, desc="evaluating")
    it = iter(bar)
    for _ in range(6):
        next(it, None)
    bar.close()
    assert manual.text.startswith("evaluating: 6/6 in") and len(manual.text.splitlines()) == 1
    tty = _Stream(True)
    monkeypatch.setattr(sys, "stderr", tty)
    bar = progress(range(4), total=4, desc="epoch", mininterval=0)
    assert type(bar).__name__ == "tqdm" or hasattr(bar, "n")
    list(bar)
    assert "4/4" in tty.text  # a real bar that advances


# ---------------------------------------------------------------- 10 + 13: summary led by case Dice; HTML report
def _seg_results():
    """Two cases of three slices; case a: one slice with nothing to find and nothing found (Dice 1)."""
    rows = []
    counts = {  # (case, slice): (tp, fp, fn) clean, then under pgd
        ("a", 0): ((0, 0, 0), (0, 5, 0)), ("a", 1): ((40, 10, 10), (20, 20, 30)), ("a", 2): ((50, 0, 10), (30, 10, 30)),
        ("b", 0): ((10, 10, 10), (0, 10, 20)), ("b", 1): ((90, 5, 5), (80, 10, 15)), ("b", 2): ((0, 10, 0), (0, 10, 0)),
    }
    for (case, sl), pair in counts.items():
        for attack, budget, (tp, fp, fn) in (("clean", 0.0, pair[0]), ("pgd", 0.1, pair[1])):
            den = 2 * tp + fp + fn
            d = 1.0 if den == 0 else 2 * tp / den
            rows.append({"sample": f"{case}:{sl}", "case": case, "slice": sl, "attack": attack, "budget": budget, "dice": d,
                         "dice_organ": d if den else float("nan"), "success": d >= 0.6, "tp_1": tp, "fp_1": fp, "fn_1": fn})
    return pd.DataFrame(rows)


def test_summary_leads_with_case_and_pooled_dice_and_the_report_is_a_page_of_tables(tmp_path):
    from html.parser import HTMLParser
    from types import SimpleNamespace

    from medrobust.evaluation.html_report import write_html_report
    from medrobust.evaluation.report import summarize, summary_table

    table = _seg_results()
    info = SimpleNamespace(task="segmentation", num_classes=2, label_map={0: "background", 1: "organ"})
    cfg = SimpleNamespace(threat=SimpleNamespace(units="rms", norm="L2"))
    s = summarize(table, cfg, info, [0.1], ["pgd"], ["a flag for the page"])
    # hand-worked: case a pools (90, 10, 20) -> 180 / 210; case b (100, 25, 15) -> 200 / 240
    case_a, case_b = 180 / 210, 200 / 240
    h = s["headline"]
    assert h["unit"] == "slice"
    assert h["clean"]["case_dice_mean"] == pytest.approx((case_a + case_b) / 2)
    assert h["clean"]["pooled_dice"] == pytest.approx(380 / 450)
    slice_mean = table[table.attack == "clean"]["dice"].mean()
    assert h["clean"]["slice_dice_mean"] == pytest.approx(slice_mean)
    assert s["clean"]["dice"]["mean"] == pytest.approx(slice_mean)  # existing keys keep their meaning
    text = summary_table(s)
    first = text.splitlines()[0]
    assert first.startswith("clean: case Dice") and first.index("pooled Dice") < first.index("per-slice Dice")
    assert f"{(case_a + case_b) / 2:.4f}" in first

    s["settings"] = {"checkpoint": "/x/best.pt", "split": "test", "n_samples": 6, "norm": "L2", "units": "rms", "budgets": [0.1],
                     "attacks": [{"name": "pgd", "label": "pgd", "steps": 3}]}
    s["time_s"] = {"total": 12.5, "attack:pgd": 10.0}
    run = tmp_path / "ev"
    run.mkdir()
    write_html_report(run, table, s, {}, info.num_classes)  # write_report draws the plots, then this
    assert (run / "per_case.csv").is_file()

    class Tables(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.links, self.cell, self.scripts = {}, [], None, 0

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "table":
                self.cur = {"class": a.get("class", ""), "head": [], "rows": []}
                self.tables[a.get("id", f"t{len(self.tables)}")] = self.cur
            elif tag == "tr":
                self.row = []
            elif tag in ("td", "th"):
                self.cell = ""
            elif tag == "a":
                self.links.append(a.get("href"))
            elif tag == "script":
                self.scripts += 1

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag == "th":
                self.cur["head"].append(self.cell)
                self.cell = None
            elif tag == "td":
                self.row.append(self.cell)
                self.cell = None
            elif tag == "tr" and self.row:
                self.cur["rows"].append(self.row)

    p = Tables()
    p.feed((run / "report.html").read_text())
    summ = p.tables["summary-table"]
    assert summ["head"][2] == "case Dice (mean)" and "per-slice Dice (mean)" in summ["head"]
    assert summ["head"].index("pooled Dice") < summ["head"].index("per-slice Dice (mean)")
    assert float(summ["rows"][0][2]) == pytest.approx((case_a + case_b) / 2, abs=1e-4)
    cases = p.tables["per-case"]
    assert "sortable" in cases["class"] and p.scripts == 1
    assert [r[0] for r in cases["rows"]] == ["a", "b"]  # worst case first: a 0.45 < b 0.76 under pgd
    worst = [float(r[cases["head"].index("worst")]) for r in cases["rows"]]
    assert worst == sorted(worst)
    assert any(r[0] == "checkpoint" and r[1] == "/x/best.pt" for r in p.tables["settings-table"]["rows"])
    assert [r[0] for r in p.tables["timing-table"]["rows"]] == ["total", "attack:pgd"]
    assert "a flag for the page" in (run / "report.html").read_text()
    assert {"results.csv", "per_case.csv", "summary.json"} <= set(p.links)


# ---------------------------------------------------------------- 1 + 12: what a training run says
@pytest.mark.slow
def test_training_run_flags_batchnorm_success_tests_and_says_when_nothing_is_validated(tmp_path, caplog):
    import json
    import logging

    from conftest import tiny_train_config
    from medrobust.config import TrainConfig, load_config
    from medrobust.training.engine import train

    method = {"name": "ima", "delta": 0.02, "eps_max": 0.3, "units": "rms", "steps": 1, "bisection_steps": 1,
              "success_threshold": 0.3, "success_mode": "train"}
    cfg = tiny_train_config(tmp_path, epochs=1, method=method,
                            model={"name": "unet", "params": {"channels": [8, 16], "strides": [2], "num_res_units": 0, "norm": "batch"}},
                            data={"phantom": {"n_cases": 6}, "split": {"val_fraction": 0.0, "test_fraction": 0.0}})
    logger = logging.getLogger("medrobust")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="medrobust"):
            res = train(load_config(TrainConfig, data=cfg))
    finally:
        logger.removeHandler(caplog.handler)
    s = json.loads((res.run_dir / "summary.json").read_text())
    assert any(f.startswith("batchnorm_train_mode_success: ima") for f in s["flags"])
    assert any(r.levelno == logging.WARNING and "batchnorm_train_mode_success" in r.getMessage() for r in caplog.records)
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("no validation cases") for m in msgs), msgs
    assert s["best_metric"] is None and not any("-inf" in m for m in msgs)
    assert s["method"]["options"]["clean_check"] == "always"


def test_validation_cases_carved_from_a_manifest_train_split_are_announced(caplog):
    import logging

    from medrobust.config import SplitConfig
    from medrobust.data.manifests import CaseRecord
    from medrobust.data.splits import split_cases

    cases = [CaseRecord(f"c{i}", None, split="train" if i < 8 else "test") for i in range(10)]
    logger = logging.getLogger("medrobust")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="medrobust"):
            out = split_cases(cases, SplitConfig(val_fraction=0.25))
    finally:
        logger.removeHandler(caplog.handler)
    assert len(out["val"]) == 2 and len(out["test"]) == 2
    msgs = [r.getMessage() for r in caplog.records if "split column" in r.getMessage()]
    assert len(set(msgs)) == 1 and "2 of its 8 train cases are used for validation" in msgs[0], msgs
