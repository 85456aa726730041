"""Deterministic splits by case: train / val / test from a seed, or k-fold over non-test cases.

Slices of one case never cross splits, because splitting happens on case records before any
slicing. A manifest's own split column (or MONAI datalist lists) wins when present.
"""

from __future__ import annotations

import logging

import numpy as np

from medrobust.config import SplitConfig
from medrobust.data.manifests import CaseRecord
from medrobust.errors import DataError


def split_cases(cases: list[CaseRecord], cfg: SplitConfig) -> dict[str, list[CaseRecord]]:
    """Assign every case to exactly one of ``train``, ``val``, ``test``."""
    if cfg.use_manifest_split and cases and all(c.split is not None for c in cases):
        out = {"train": [], "val": [], "test": []}
        for c in cases:
            out[c.split].append(c)
        if cfg.folds is None and out["val"]:
            return out
        # a manifest may give only train/test: draw val (or folds) from its train cases
        pool, test = out["train"] + out["val"], out["test"]
        res = _split_pool(pool, test, cfg, test_given=True)
        logging.getLogger(__name__).info(
            "split: the manifest's split column has %s; %d of its %d train cases are used for validation (%s, seed %d)",
            "no val rows" if not out["val"] else "val rows but folds are set", len(res["val"]), len(pool),
            f"fold {cfg.fold} of {cfg.folds}" if cfg.folds is not None else f"split.val_fraction {cfg.val_fraction:g}", cfg.seed)
        return res
    ordered = sorted(cases, key=lambda c: c.case_id)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    n_test = int(round(cfg.test_fraction * len(shuffled)))
    if cfg.test_fraction > 0 and n_test == 0 and len(shuffled) >= 3:
        n_test = 1
    test, pool = shuffled[:n_test], shuffled[n_test:]
    return _split_pool(pool, test, cfg)


def _split_pool(pool: list[CaseRecord], test: list[CaseRecord], cfg: SplitConfig,
                test_given: bool = False) -> dict[str, list[CaseRecord]]:
    pool = sorted(pool, key=lambda c: c.case_id)
    rng = np.random.default_rng([cfg.seed, 1])
    pool = [pool[i] for i in rng.permutation(len(pool))]
    if cfg.folds is not None:
        if len(pool) < cfg.folds:
            raise DataError(f"{cfg.folds}-fold cross-validation needs at least {cfg.folds} non-test cases but there are {len(pool)}; lower split.folds.")
        folds = np.array_split(np.arange(len(pool)), cfg.folds)
        val_idx = set(folds[cfg.fold].tolist())
        val = [c for i, c in enumerate(pool) if i in val_idx]
        train = [c for i, c in enumerate(pool) if i not in val_idx]
    else:
        denom = 1.0 if test_given else max(1e-9, 1.0 - cfg.test_fraction)
        n_val = int(round(cfg.val_fraction / denom * len(pool))) if cfg.val_fraction > 0 else 0
        if cfg.val_fraction > 0 and n_val == 0 and len(pool) >= 2:
            n_val = 1
        val, train = pool[:n_val], pool[n_val:]
    if not train and not test_given:
        raise DataError(f"the split leaves no training cases ({len(pool)} non-test cases); lower split.val_fraction / test_fraction or add data.")
    return {"train": sorted(train, key=lambda c: c.case_id), "val": sorted(val, key=lambda c: c.case_id),
            "test": sorted(test, key=lambda c: c.case_id)}


def check_no_leakage(splits: dict[str, list[CaseRecord]]) -> None:
    """Refuse a case, or one image file, that appears in two splits.

    Files are compared by resolved path and, for files of equal size in different splits, by
    content, so the same image listed under two case ids (or copied under another name) is caught.
    """
    seen: dict[str, str] = {}
    for name, cases in splits.items():
        for c in cases:
            if c.case_id in seen and seen[c.case_id] != name:
                raise DataError(f"case '{c.case_id}' is in both the {seen[c.case_id]} and {name} splits; case ids must be unique.")
            seen[c.case_id] = name
    _check_file_leakage(splits)


def _check_file_leakage(splits: dict[str, list[CaseRecord]]) -> None:
    import hashlib
    import os

    by_path: dict[str, tuple[str, str]] = {}
    by_size: dict[int, list[tuple[str, str, str]]] = {}
    for name, cases in splits.items():
        for c in cases:
            if c.in_memory or not isinstance(c.image, (list, tuple)):
                continue
            for f in c.image:
                real = os.path.realpath(str(f).split("#", 1)[0]) + ("#" + str(f).split("#", 1)[1] if "#" in str(f) else "")
                if real in by_path and by_path[real][0] != name and by_path[real][1] != c.case_id:
                    other_split, other_case = by_path[real]
                    raise DataError(f"image file '{f}' is listed for case '{other_case}' ({other_split}) and case '{c.case_id}' "
                                    f"({name}); the same image in two splits leaks test data into training, so list it once.")
                by_path.setdefault(real, (name, c.case_id))
                if "#" not in real:
                    try:
                        by_size.setdefault(os.path.getsize(real), []).append((real, name, c.case_id))
                    except OSError:
                        pass

    def digest(path: str) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    for group in by_size.values():
        if len({g[1] for g in group}) < 2:
            continue
        hashes: dict[str, tuple[str, str, str]] = {}
        for path, split, case in group:
            try:
                d = digest(path)
            except OSError:
                continue
            if d in hashes and hashes[d][1] != split and hashes[d][2] != case and hashes[d][0] != path:
                raise DataError(f"image files '{hashes[d][0]}' (case '{hashes[d][2]}', {hashes[d][1]}) and '{path}' (case '{case}', "
                                f"{split}) have identical content; the same image in two splits leaks test data into "
                                f"training, so remove the duplicate.")
            hashes.setdefault(d, (path, split, case))
