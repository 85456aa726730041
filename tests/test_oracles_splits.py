"""Independent oracles for medrobust.data.splits: split sizes worked out by hand, the documented
seeded permutation re-derived in the test, leakage detection given a leak."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust.config import SplitConfig
from medrobust.data.manifests import CaseRecord
from medrobust.data.splits import check_no_leakage, split_cases
from medrobust.errors import DataError


def _cases(n, split=None):
    return [CaseRecord(case_id=f"c{i:02d}", image=[f"x{i}"], split=split) for i in range(n)]


def _ids(cs):
    return [c.case_id for c in cs]


def _sizes(s):
    return len(s["train"]), len(s["val"]), len(s["test"])


def test_check_no_leakage_catches_a_leak_and_passes_a_clean_split():
    a, b, c = _cases(3)
    check_no_leakage({"train": [a, b], "val": [c], "test": []})
    check_no_leakage({"train": [a, a], "val": [], "test": []})  # listed twice in one split is not a leak
    with pytest.raises(DataError, match="'c01' is in both the train and test splits"):
        check_no_leakage({"train": [a, b], "val": [c], "test": [b]})
    with pytest.raises(DataError, match="'c00' is in both the val and test"):
        check_no_leakage({"val": [a], "test": [a]})


@pytest.mark.parametrize("n,val,test,expected", [
    (10, 0.2, 0.2, (6, 2, 2)),       # test round(2.0) = 2; val round(0.2 / 0.8 * 8) = 2
    (7, 0.3, 0.1, (4, 2, 1)),        # test round(0.7) = 1; val round(0.3 / 0.9 * 6) = 2
    (20, 0.1, 0.3, (12, 2, 6)),      # test 6; val round(0.1 / 0.7 * 14) = 2
    (5, 0.05, 0.05, (3, 1, 1)),      # both rounded to 0, forced to 1
    (2, 0.0, 0.05, (2, 0, 0)),       # 2 cases: no forced test case, no validation asked
    (3, 0.0, 0.05, (2, 0, 1)),       # 3 cases: one forced test case
    (4, 0.1, 0.0, (3, 1, 0)),        # val round(0.4) = 0, forced to 1
    (2, 0.1, 0.0, (1, 1, 0)),        # two cases are enough for a forced validation case
    (1, 0.1, 0.0, (1, 0, 0)),        # one is not
])
def test_split_sizes_by_hand(n, val, test, expected):
    s = split_cases(_cases(n), SplitConfig(seed=1, val_fraction=val, test_fraction=test))
    assert _sizes(s) == expected
    assert sorted(_ids(s["train"] + s["val"] + s["test"])) == _ids(_cases(n))
    for k in ("train", "val", "test"):
        assert _ids(s[k]) == sorted(_ids(s[k]))


def test_split_follows_the_documented_seeded_permutation():
    cases = _cases(12)
    cfg = SplitConfig(seed=7, val_fraction=0.25, test_fraction=0.25)
    s = split_cases(list(reversed(cases)), cfg)
    ordered = _ids(cases)  # sorted by case id
    perm = np.random.default_rng(7).permutation(12)
    shuffled = [ordered[i] for i in perm]
    test, pool = shuffled[:3], sorted(shuffled[3:])
    pool = [pool[i] for i in np.random.default_rng([7, 1]).permutation(9)]
    assert _ids(s["test"]) == sorted(test)
    assert _ids(s["val"]) == sorted(pool[:3])  # round(0.25 / 0.75 * 9) = 3
    assert _ids(s["train"]) == sorted(pool[3:])


def test_kfold_sizes_and_errors():
    cases = _cases(13)
    sizes = []
    for f in range(4):
        s = split_cases(cases, SplitConfig(seed=0, test_fraction=0.2, folds=4, fold=f))
        assert len(s["test"]) == 3
        sizes.append(len(s["val"]))
        assert len(s["train"]) + len(s["val"]) == 10
    assert sizes == [3, 3, 2, 2]  # numpy array_split of 10 into 4
    split_cases(_cases(4), SplitConfig(test_fraction=0.0, folds=4, fold=3))  # exactly k non-test cases is enough
    with pytest.raises(DataError, match="4-fold cross-validation needs at least 4 non-test cases but there are 3"):
        split_cases(_cases(3), SplitConfig(test_fraction=0.0, folds=4))
    with pytest.raises(DataError, match="no training cases"):
        split_cases(_cases(1), SplitConfig(test_fraction=0.0, val_fraction=0.6))  # round(0.6) = 1 validation case, none left


def test_manifest_split_is_kept_or_completed():
    cs = _cases(6)
    for c, sp in zip(cs, ["train", "train", "val", "test", "train", "test"]):
        c.split = sp
    s = split_cases(cs, SplitConfig(seed=3))
    assert (_ids(s["train"]), _ids(s["val"]), _ids(s["test"])) == (["c00", "c01", "c04"], ["c02"], ["c03", "c05"])
    ignore = split_cases(cs, SplitConfig(seed=3, use_manifest_split=False, val_fraction=0.2, test_fraction=0.2))
    assert _sizes(ignore) == (4, 1, 1)  # test round(1.2) = 1, val round(0.25 * 5) = 1
    # only train / test given: val drawn from the train cases with the fraction of all non-test cases
    tt = _cases(10, split="train")
    tt[8].split = tt[9].split = "test"
    s2 = split_cases(tt, SplitConfig(seed=0, val_fraction=0.3))
    assert _ids(s2["test"]) == ["c08", "c09"] and len(s2["val"]) == 2 and len(s2["train"]) == 6  # round(0.3 * 8) = 2, not 0.3 / 0.8 * 8
    pool = [pool_id for pool_id in _ids(tt[:8])]
    pool = [pool[i] for i in np.random.default_rng([0, 1]).permutation(8)]
    assert _ids(s2["val"]) == sorted(pool[:2])
    # folds over a manifest that has val too: the pool is train + val
    s3 = split_cases(cs, SplitConfig(seed=3, folds=2, fold=1))
    assert _ids(s3["test"]) == ["c03", "c05"] and len(s3["val"]) == 2 and len(s3["train"]) == 2
    # a manifest with a split for only some cases is ignored
    part = _cases(5)
    part[0].split = "test"
    assert _sizes(split_cases(part, SplitConfig(seed=0, val_fraction=0.2, test_fraction=0.2))) == (3, 1, 1)
