"""Sampled mutation testing of the modules that compute medrobust's reported numbers (not in CI).

A small AST mutator in the spirit of mutmut: it enumerates one-token changes in each module
(arithmetic, comparison, boolean and bitwise operators, ``not`` / unary minus / ``~`` removed,
numbers n -> n + 1, True <-> False, ``break`` <-> ``continue``, and swapped reductions such as
``all`` <-> ``any``, ``amax`` <-> ``amin``, ``sum`` <-> ``mean``), draws a seeded sample per module,
and runs the fast tests that exercise that module against each mutant. A mutant is *killed* when
a test fails or times out. Survivors are printed with their line so that a person can judge
whether they are equivalent; known equivalent mutants are listed in ``EQUIVALENT`` with the reason
and left out of the score.

Why not ``mutmut run``: mutmut 3 copies the project into ``mutants/`` and needs the tests to
import the package from there, while this project's tests import ``medrobust`` from
``PYTHONPATH``; the ``[tool.mutmut]`` section of ``pyproject.toml`` records the same module and
test selection for anyone who prefers mutmut.

Each mutant runs in a forked child of a parent that has already imported torch, MONAI and pandas
(but not medrobust), with an import hook that compiles the mutated source in place of the file,
so nothing in the working tree is written and one mutant costs only its tests.

Usage (from the repository root, with ``PYTHONPATH=$PWD``)::

    python benchmarks/mutation_score.py                       # 25 mutants per module, seed 0
    python benchmarks/mutation_score.py --modules tasks threat --sample 40 --seed 1
    python benchmarks/mutation_score.py --list tasks          # every mutation site of a module
    python benchmarks/mutation_score.py --sample 0            # every mutant (slow)

Output: one line per module ``killed / non-equivalent (score %)`` and the survivors.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.abc
import importlib.util
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> (file, fast tests that exercise it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "tasks": ("medrobust/tasks.py", ["tests/test_oracles_tasks.py", "tests/test_oracles_tasks_weights.py", "tests/test_tasks.py",
                                     "tests/test_oracles_classification.py"]),
    "threat": ("medrobust/threat.py", ["tests/test_oracles_threat.py", "tests/test_oracles_threat_tolerance.py"]),
    "attacks.pgd": ("medrobust/attacks/pgd.py", ["tests/test_oracles_attacks.py", "tests/test_oracles_loop.py"]),
    "attacks.apgd": ("medrobust/attacks/apgd.py", ["tests/test_oracles_attacks.py"]),
    "attacks.base": ("medrobust/attacks/base.py", ["tests/test_oracles_attacks.py", "tests/test_oracles_loop.py"]),
    "attacks.loop": ("medrobust/attacks/loop.py", ["tests/test_oracles_loop.py", "tests/test_oracles_attacks.py"]),
    "evaluation.report": ("medrobust/evaluation/report.py", ["tests/test_oracles_metrics.py", "tests/test_oracles_report_blocks.py"]),
    "evaluation.metrics": ("medrobust/evaluation/metrics.py", ["tests/test_oracles_metrics.py", "tests/test_oracles_classification.py",
                                                              "tests/test_oracles_metrics_edges.py"]),
    "data.splits": ("medrobust/data/splits.py", ["tests/test_oracles_splits.py", "tests/test_oracles_file_leakage.py"]),
}

CORE = list(MODULES)  # the default run: the eight modules of issue #17

# code added by other issues that also computes reported numbers (run with --modules KEY)
MODULES.update({
    "study.stats": ("medrobust/study/stats.py", ["tests/test_oracles_stats.py", "tests/test_oracles_stats_edges.py", "tests/test_study.py"]),
    "inference": ("medrobust/inference.py", ["tests/test_oracles_inference.py", "tests/test_oracles_inference_paths.py", "tests/test_inference.py"]),
    "attacks.artefacts": ("medrobust/attacks/artefacts.py", ["tests/test_oracles_artefacts.py", "tests/test_oracles_artefacts_params.py",
                                                            "tests/test_artefacts.py"]),
})

# functions left out of the mutation sample: drawing and HTML only (they compute no reported number)
SKIP_FUNCTIONS: dict[str, set[str]] = {
    "evaluation.report": {"plot_metric_vs_budget", "plot_per_class", "plot_distributions", "plot_examples",
                          "write_report", "_html"},
}

# (module, stripped source line, mutation, occurrence of that mutation on that line) -> why no test can tell it apart
_SAME_BYTES = "reading in 2 MiB instead of 1 MiB blocks feeds the same bytes to the digest"
_SIGN_OR_NORMALISED = "the loss is summed over independent samples; steps use its sign (Linf) or its normalised value (L2), so a 1/B factor changes nothing"
EQUIVALENT: dict[tuple[str, str, str, int], str] = {
    ("attacks.pgd", "idx = torch.nonzero(best.score > 0.5).flatten()", "> -> >=", 0): "classification scores are 0 or 1",
    ("attacks.pgd", "start = xs + self.threat.random_delta(xs, es, p.random_radius) if p.random_start else None", "+ -> -", 0):
        "the random start is symmetric about 0, so subtracting it draws from the same distribution",
    ("attacks.pgd", "start = x + self.threat.random_delta(x, eps, p.random_radius) if p.random_start else None", "+ -> -", 0):
        "the random start is symmetric about 0, so subtracting it draws from the same distribution",
    ("attacks.loop", "(g,) = torch.autograd.grad(loss.sum(), xa)", ".sum -> .mean", 0): _SIGN_OR_NORMALISED,
    ("attacks.loop", "for t in range(steps + 1):", "1 -> 2", 0):
        "the loop always breaks at t == steps (the last iterate is scored or not, then break): a longer range is never reached",
    ("attacks.loop", "break", "break -> continue", 0):
        "the first break is taken only at t == steps, the last value of range(steps + 1): continue ends the loop as well",
    ("attacks.pgd", "break", "break -> continue", 0):
        "no sample is left to attack (idx is empty), and the remaining restarts find the same empty set: continue ends with the same result",
    ("attacks.pgd", "ls = lim if lim is None or lim[0].shape[0] == 1 else (lim[0][idx], lim[1][idx])", "0 -> 1", 0):
        "lim[0].shape -> lim[1].shape: both bounds have the same shape",
    ("attacks.apgd", "sub_lim = lim if lim is None or lim[0].shape[0] == 1 else (lim[0][idx], lim[1][idx])", "0 -> 1", 0):
        "lim[0].shape -> lim[1].shape: both bounds have the same shape",
    ("attacks.apgd", "(g,) = torch.autograd.grad(loss.sum(), xa)", ".sum -> .mean", 0): _SIGN_OR_NORMALISED,
    ("attacks.pgd", "self.pgd = PGD(PGDParams(steps=1, step_size=1.0, random_start=False, loss=params.loss, seed=params.seed,", "1.0 -> 2.0", 0):
        "one step from the clean input along a fixed direction, then projected onto the ball: any step >= eps lands on the same point",
    ("tasks", 'out[:, c] = torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.full_like(den, float("nan")))', "1 -> 2", 0):
        "den = 2 TP + FP + FN is an integer, and den = 1 forces TP = 0, so clamping at 2 instead of 1 changes no value",
    ("tasks", "if t.ndim >= 3 and t.shape[1] == 1:", "3 -> 4", 0):
        "the branch only drops a singleton axis 1 before flattening to (B, -1), which gives the same (B, N) labels with or without it",
    ("tasks", "if t.ndim >= 3 and t.shape[1] == 1:", ">= -> >", 0):
        "the branch only drops a singleton axis 1 before flattening to (B, -1), which gives the same (B, N) labels with or without it",
    ("evaluation.metrics", "has_p = p1.reshape(b, num_classes, -1).sum(-1)[:, 1:] > 0", ".sum -> .mean", 0):
        "one-hot masks are 0 / 1 over a non-empty image: the mean over voxels is > 0 exactly when the sum is",
    ("evaluation.metrics", "has_t = t1.reshape(b, num_classes, -1).sum(-1)[:, 1:] > 0", ".sum -> .mean", 0):
        "one-hot masks are 0 / 1 over a non-empty image: the mean over voxels is > 0 exactly when the sum is",
    ("evaluation.metrics", "return np.where(den > 0, 2 * s[:, 0] / np.maximum(den, 1), np.nan)", "1 -> 2", 0):
        "den = 2 TP + FP + FN is an integer, and den = 1 forces TP = 0, so dividing by 2 instead of 1 changes no value",
    ("evaluation.metrics", "present = onehot.sum(0) > 0", ".sum -> .mean", 0):
        "onehot holds 0 and 1 and has at least two rows here (fewer than two labels return NaN before), so a column's mean is > 0 exactly when its sum is",
    ("data.splits", "n_val = int(round(cfg.val_fraction / denom * len(pool))) if cfg.val_fraction > 0 else 0", "> -> >=", 0):
        "with val_fraction 0 both branches give 0",
    ("data.splits", 'real = os.path.realpath(str(f).split("#", 1)[0]) + ("#" + str(f).split("#", 1)[1] if "#" in str(f) else "")', "1 -> 2", 0):
        "the first split keeps element [0], the text before the first '#', which any maxsplit >= 1 gives alike",
    ("data.splits", "if len({g[1] for g in group}) < 2:", "1 -> 2", 0):
        "skipping groups by case ids instead of splits: a group spanning two splits always spans two case ids (check_no_leakage "
        "refuses a case id in two splits first), and a group within one split can never raise (the content check needs two splits)",
    ("data.splits", 'for block in iter(lambda: fh.read(1 << 20), b""):', "1 -> 2", 0):
        _SAME_BYTES,
    ("data.splits", 'for block in iter(lambda: fh.read(1 << 20), b""):', "20 -> 21", 0):
        _SAME_BYTES,
    ("data.splits", "if d in hashes and hashes[d][1] != split and hashes[d][2] != case and hashes[d][0] != path:", "0 -> 1", 0):
        "hashes[d][1] is a split name and path an absolute real path, never equal; and the original test is True whenever "
        "reached: check_no_leakage refuses one path in two splits (by path, or by case id) before the content check",
    ("attacks.base", "better = (s < cur_s - 1e-12) | ((s <= cur_s + 1e-12) & (l > cur_l))", "< -> <=", 0):
        "differs only when a score equals the current one minus exactly 1e-12",
    ("attacks.base", "better = (s < cur_s - 1e-12) | ((s <= cur_s + 1e-12) & (l > cur_l))", "<= -> <", 0):
        "differs only when a score equals the current one plus exactly 1e-12",
    # code of the other open issues (run with --add)
    ("study.stats", 'worse = [r for _, r in others.iterrows() if significant(r.p_holm, r.ci_low, r.ci_high, alpha) and r["diff"] < 0]', "< -> <=", 0):
        "differs only for a significant row whose mean difference is exactly 0 (an interval that excludes 0 but not the mean), which the paired bootstrap does not produce",
    ("study.stats", 'better = [r for _, r in others.iterrows() if significant(r.p_holm, r.ci_low, r.ci_high, alpha) and r["diff"] > 0]', "> -> >=", 0):
        "differs only for a significant row whose mean difference is exactly 0 (an interval that excludes 0 but not the mean), which the paired bootstrap does not produce",
    ("study.stats", 'def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:', "drop -", 0):
        "scipy's vectorised bootstrap always passes axis=-1, so the default is never used",
    ("study.stats", 'def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:', "1 -> 2", 0):
        "scipy's vectorised bootstrap always passes axis=-1, so the default is never used",
    ("study.stats", 'res = stats.bootstrap((a, b), stat, paired=True, vectorized=True, confidence_level=confidence,', "True -> False", 1):
        "vectorized=False makes scipy loop over the same resamples: same interval, only slower",
    ("study.stats", 'res = stats.bootstrap((a, b), stat, paired=True, vectorized=True, confidence_level=confidence,', "True -> False", 3):
        "the fallback's vectorized=False: scipy loops over the same resamples, same interval, only slower",
    ("study.stats", 'if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa can fail on very small samples', "and -> or", 0):
        "scipy's BCa bounds are both NaN or both finite (the NaN comes from an infinite bias correction z0 or a NaN "
        "acceleration, which enter both ends alike, and a bound is otherwise a percentile of finite resample means), "
        "so 'not both finite' and 'neither finite' agree",
    ("study.stats", 'if np.ptp(d) <= 1e-12:  # degenerate (up to rounding): every resample gives the same mean', "<= -> <", 0):
        "differs only when the spread of the differences is exactly 1e-12",
    ("inference", "if self.roi_size and self.multiple > 1 and any(r % self.multiple for r in self.roi_size):", "> -> >=", 0):
        "with multiple 1 every r % 1 is 0 (window sizes are integers), so the any() is False either way",
    ("attacks.artefacts", 'g, = torch.autograd.grad(loss.sum(), c)', ".sum -> .mean", 0):
        "the loss is summed over independent samples and the step uses the gradient's sign, so a 1/B factor changes nothing",
    ("attacks.artefacts", 'if s.numel() != c or bool((s.abs() < 1e-30).any()):', "< -> <=", 0):
        "differs only for an intensity scale of exactly +-1e-30 (the tolerance's own boundary)",
    ("attacks.artefacts", 'if s.numel() == 1 and c > 1:', "> -> >=", 0):
        "with one channel, expanding a one-element scale to one channel changes nothing",
    ("attacks.artefacts", 'out[c:c + 1] = torch.as_tensor(t(xs[c:c + 1]), dtype=torch.float64)', "1 -> 2", 0):
        "out[c:c + 2] also writes channel c + 1, which the next iteration overwrites (channels run in order)",
    ("attacks.artefacts", "alt = (-1.0) ** np.arange(n)[:, None] * rng.choice([-1.0, 1.0], size=(1, 3))", "* -> /", 0):
        "the factor drawn is -1.0 or 1.0, and x / -1.0 == x * -1.0, x / 1.0 == x * 1.0 exactly in floating point",
    ("attacks.artefacts", "degrees = rng.uniform(0.75 * deg, deg, size=(n, 3)) * alt", "* -> /", 0):
        "alt holds only -1.0 and 1.0, and dividing by +-1.0 equals multiplying by it exactly in floating point",
    ("attacks.artefacts", "translation = rng.uniform(0.75 * mm, mm, size=(n, 3)) * alt", "* -> /", 0):
        "alt holds only -1.0 and 1.0, and dividing by +-1.0 equals multiplying by it exactly in floating point",
    ("attacks.artefacts", 'sp = [spacing[0], 1.0, spacing[1]]', "1.0 -> 2.0", 0):
        "the spacing of the singleton axis of a 2D image: rotations are about that axis and translations lie in the plane, so TorchIO's output is identical (checked: max difference 0)",
}

SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
            ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
            ast.MatMult: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
            ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SWAP_NAME = {"all": "any", "any": "all", "amax": "amin", "amin": "amax", "max": "min", "min": "max", "sum": "mean",
             "mean": "sum", "minimum": "maximum", "maximum": "minimum", "argmax": "argmin", "argmin": "argmax",
             "nanmean": "nanmedian", "floor": "ceil", "ceil": "floor", "clamp_min": "clamp_max", "abs": "neg"}
OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
       ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
       ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
       ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    module: str
    index: int  # position in the module's site list
    line: int
    function: str
    what: str
    source_line: str
    occurrence: int = 0  # how many earlier sites have the same line text and mutation

    def key(self) -> tuple[str, str, str, int]:
        return (self.module, self.source_line, self.what, self.occurrence)


def _skipped_nodes(tree: ast.AST, skip_funcs: set[str]) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, f-strings, skipped functions."""
    skip: set[int] = set()

    def mark(n: ast.AST) -> None:
        for s in ast.walk(n):
            skip.add(id(s))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name in skip_funcs:
                mark(node)
                continue
            if node.returns is not None:
                mark(node.returns)
            for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                if a.annotation is not None:
                    mark(a.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                mark(body[0])
        if isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        if isinstance(node, ast.JoinedStr):
            mark(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mark(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                and node.func.value.id in ("log", "logging", "warnings"):
            mark(node)
    return skip


def _function_of(tree: ast.AST) -> dict[int, str]:
    out: dict[int, str] = {}

    def visit(n: ast.AST, name: str) -> None:
        for c in ast.iter_child_nodes(n):
            nm = f"{name}.{c.name}" if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and name else \
                c.name if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else name
            out[id(c)] = nm
            visit(c, nm)

    visit(tree, "")
    return out


def sites(tree: ast.AST, skip_funcs: set[str]) -> list[tuple[ast.AST, int, str]]:
    """Every mutation site as (node, variant, description), in a stable order."""
    skip = _skipped_nodes(tree, skip_funcs)
    out: list[tuple[ast.AST, int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in SWAP_BIN:
            out.append((node, 0, f"{OPS[type(node.op)]} -> {OPS[SWAP_BIN[type(node.op)]]}"))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in SWAP_CMP:
                    out.append((node, i, f"{OPS[type(op)]} -> {OPS[SWAP_CMP[type(op)]]}"))
        elif isinstance(node, ast.BoolOp):
            out.append((node, 0, f"{OPS[type(node.op)]} -> {'or' if isinstance(node.op, ast.And) else 'and'}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
            out.append((node, 0, f"drop {'not' if isinstance(node.op, ast.Not) else '-' if isinstance(node.op, ast.USub) else '~'}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            if isinstance(node.value, bool):
                out.append((node, 0, f"{node.value} -> {not node.value}"))
            else:
                out.append((node, 0, f"{node.value!r} -> {node.value + 1!r}"))
        elif isinstance(node, (ast.Break, ast.Continue)):
            out.append((node, 0, "break -> continue" if isinstance(node, ast.Break) else "continue -> break"))
        elif isinstance(node, ast.Attribute) and node.attr in SWAP_NAME and isinstance(node.ctx, ast.Load):
            out.append((node, 0, f".{node.attr} -> .{SWAP_NAME[node.attr]}"))
        elif isinstance(node, ast.Name) and node.id in ("min", "max", "sum", "all", "any", "abs") and isinstance(node.ctx, ast.Load):
            alt = {"min": "max", "max": "min", "sum": "len", "all": "any", "any": "all", "abs": "float"}[node.id]
            out.append((node, 0, f"{node.id}() -> {alt}()"))
    out.sort(key=lambda s: (getattr(s[0], "lineno", 0), getattr(s[0], "col_offset", 0), s[1], s[2]))
    return out


def apply(tree: ast.AST, target_index: int, skip_funcs: set[str]) -> ast.AST:
    """A deep copy of ``tree`` with site ``target_index`` mutated."""
    t2 = copy.deepcopy(tree)
    node, variant, _ = sites(t2, skip_funcs)[target_index]
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        node.op = SWAP_BIN[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[variant] = SWAP_CMP[type(node.ops[variant])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        _NOOP.add(id(node))  # replaced by its operand below
    elif isinstance(node, ast.Constant):
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    elif isinstance(node, ast.Break):
        node.__class__ = ast.Continue
    elif isinstance(node, ast.Continue):
        node.__class__ = ast.Break
    elif isinstance(node, ast.Attribute):
        node.attr = SWAP_NAME[node.attr]
    elif isinstance(node, ast.Name):
        node.id = {"min": "max", "max": "min", "sum": "len", "all": "any", "any": "all", "abs": "float"}[node.id]
    return ast.fix_missing_locations(_DropNoop().visit(t2))


_NOOP: set[int] = set()


class _DropNoop(ast.NodeTransformer):
    def visit_UnaryOp(self, node: ast.UnaryOp):  # noqa: N802
        self.generic_visit(node)
        if id(node) in _NOOP:
            return node.operand
        return node


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, fullname: str, path: str, code) -> None:
        self.fullname, self.path, self.code = fullname, path, code

    def find_spec(self, fullname, path, target=None):
        if fullname == self.fullname:
            return importlib.util.spec_from_loader(fullname, self, origin=self.path)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.path
        exec(self.code, module.__dict__)


def _run_child(module: str, code, tests: list[str], quiet: bool = True) -> int:
    import pytest

    # the parent may have imported (unmutated) medrobust modules while warming the test models: drop them
    for name in [k for k in sys.modules if k == "medrobust" or k.startswith("medrobust.")]:
        del sys.modules[name]
    if code is not None:
        fullname = "medrobust." + module
        sys.meta_path.insert(0, _MutantFinder(fullname, str(ROOT / MODULES[module][0]), code))
    devnull = os.open(os.devnull, os.O_WRONLY)
    if quiet:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    return int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-m", "not slow and not realdata",
                            "--no-header", "-W", "ignore", *tests]))


def run_one(module: str, code, tests: list[str], timeout: float) -> tuple[str, float]:
    """'killed' / 'survived' / 'timeout' and the seconds it took, in a forked child."""
    t0 = time.time()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.setpgid(0, 0)
            rc = _run_child(module, code, tests)
        except BaseException:  # noqa: BLE001 - an import error of the mutant counts as killed
            rc = 3
        os._exit(rc)
    deadline = t0 + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            return ("survived" if rc == 0 else "killed"), time.time() - t0
        if time.time() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return "timeout", time.time() - t0
        time.sleep(0.05)


def enumerate_mutants(module: str) -> tuple[ast.AST, list[Mutant]]:
    path, _ = MODULES[module]
    src = (ROOT / path).read_text()
    tree = ast.parse(src)
    lines = src.splitlines()
    skip = SKIP_FUNCTIONS.get(module, set())
    fn = _function_of(tree)
    out = []
    seen: dict[tuple[str, str], int] = {}
    for i, (node, _, what) in enumerate(sites(tree, skip)):
        ln = getattr(node, "lineno", 0)
        text = lines[ln - 1].strip() if ln else ""
        occ = seen.get((text, what), 0)
        seen[(text, what)] = occ + 1
        out.append(Mutant(module, i, ln, fn.get(id(node), ""), what, text, occ))
    return tree, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="*", default=list(CORE), help="module keys (default: the eight core ones; also study.stats, inference, attacks.artefacts)")
    ap.add_argument("--sample", type=int, default=25, help="mutants per module (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=0.0, help="seconds per mutant (default: 4 x the clean run + 20)")
    ap.add_argument("--list", metavar="MODULE", help="print every mutation site of MODULE and exit")
    ap.add_argument("--index", nargs="*", type=int, default=[], help="run only these site indices (see --list); one module")
    ap.add_argument("--add", nargs="*", default=[], metavar="KEY=FILE:TESTS",
                    help="extra modules, e.g. evaluation.stats=medrobust/evaluation/stats.py:tests/test_stats.py,tests/test_x.py "
                         "(KEY is the module name under medrobust)")
    args = ap.parse_args(argv)
    for spec in args.add:
        key, _, rest = spec.partition("=")
        path, _, tests = rest.partition(":")
        if not key or not path or not tests:
            print(f"--add {spec!r}: give KEY=FILE:TEST[,TEST...]", file=sys.stderr)
            return 2
        MODULES[key] = (path, tests.split(","))
        if key not in args.modules:
            args.modules.append(key)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("MEDROBUST_NO_PROGRESS", "1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if args.list:
        _, ms = enumerate_mutants(args.list)
        for m in ms:
            print(f"{m.index:4d} {m.line:4d} {m.function:30s} {m.what:24s} {m.source_line[:90]}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {list(MODULES)}", file=sys.stderr)
        return 2
    # heavy third-party imports once, in the parent, so that forked children start warm
    import monai  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pytest  # noqa: F401
    import torch  # noqa: F401

    # the trained test models, once (children keep models_fixtures' cache; medrobust itself is re-imported per mutant)
    import models_fixtures

    models_fixtures.trained_cls()
    models_fixtures.phantom_seg()
    totals = {}
    for module in args.modules:
        path, tests = MODULES[module]
        tree, muts = enumerate_mutants(module)
        rng = random.Random(f"{args.seed}:{module}")
        chosen = muts if args.sample <= 0 or args.sample >= len(muts) else sorted(rng.sample(muts, args.sample), key=lambda m: m.index)
        if args.index:
            chosen = [muts[i] for i in args.index]
        status, dt = run_one(module, None, tests, 3600)
        if status != "survived":
            print(f"{module}: the tests fail without any mutation; fix them first", file=sys.stderr)
            return 1
        timeout = args.timeout or 4 * dt + 20
        skip = SKIP_FUNCTIONS.get(module, set())
        killed = equivalent = 0
        survivors = []
        for m in chosen:
            if m.key() in EQUIVALENT:
                equivalent += 1
                continue
            code = compile(apply(tree, m.index, skip), str(ROOT / path), "exec")
            st, _ = run_one(module, code, tests, timeout)
            if st == "survived":
                survivors.append(m)
            else:
                killed += 1
        n = len(chosen) - equivalent
        score = 100.0 * killed / n if n else float("nan")
        totals[module] = (killed, n, score)
        print(f"{module:20s} killed {killed:3d} / {n:3d} non-equivalent ({score:5.1f} %); {equivalent} equivalent; "
              f"{len(muts)} sites; clean run {dt:.1f}s", flush=True)
        for m in survivors:
            print(f"    survived: {path}:{m.line} [{m.function}] {m.what}: {m.source_line[:100]}", flush=True)
    k = sum(v[0] for v in totals.values())
    n = sum(v[1] for v in totals.values())
    if n:
        print(f"{'all':20s} killed {k:3d} / {n:3d} ({100.0 * k / n:5.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
