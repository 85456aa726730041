"""The HTML report of an evaluation: one self-contained page with tables, not a text dump.

Sections: the headline (segmentation: per-case Dice and pooled Dice first, per-slice second;
classification: accuracy, balanced accuracy, AUC), the results per attack and budget, the
per-case table (sortable by clicking a column header; worst cases first), the settings, the
sanity flags, the timing, the plots, and links to the CSV / JSON files. Every table is a real
``<table>`` with ``<thead>`` / ``<tbody>``, so it can be read by a parser or copied into a
spreadsheet.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

from medrobust.evaluation.metrics import pooled_dice

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:0 12px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0;cursor:default}table.sortable th{cursor:pointer}td.l,th.l{text-align:left}
.flag{color:#a40000}img{max-width:100%}code{background:#f6f6f6;padding:1px 3px}caption{text-align:left;color:#555}"""

_SORT_JS = """document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var b=t.tBodies[0],rows=Array.from(b.rows),asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
  rows.sort(function(r1,r2){var a=r1.cells[i].dataset.v||r1.cells[i].textContent,c=r2.cells[i].dataset.v||r2.cells[i].textContent;
   var x=parseFloat(a),y=parseFloat(c);if(!isNaN(x)&&!isNaN(y))return asc?x-y:y-x;return asc?a.localeCompare(c):c.localeCompare(a);});
  rows.forEach(function(r){b.appendChild(r);});});});});"""


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{float(v):.4f}"
    return str(v)


def table_html(header: list[str], rows: Iterable[list[Any]], cls: str = "", caption: str = "", left: int = 1,
               table_id: Optional[str] = None) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text, numbers keep a sort key."""
    attrs = (f" id='{table_id}'" if table_id else "") + (f" class='{cls}'" if cls else "")
    out = [f"<table{attrs}>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th{' class=l' if i < left else ''}>{html.escape(h)}</th>" for i, h in enumerate(header))
               + "</tr></thead><tbody>")
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            key = f" data-v='{float(v)!r}'" if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else ""
            cells.append(f"<td{' class=l' if i < left else ''}{key}>{html.escape(_fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# ---------------------------------------------------------------------------- per-case table
def _case_dice(g: pd.DataFrame, k_classes: list[int]) -> float:
    counts = np.stack([g[[f"tp_{k}", f"fp_{k}", f"fn_{k}"]].to_numpy(dtype=float) for k in k_classes], 1)
    v = pooled_dice(counts)
    return float(np.nanmean(v)) if np.isfinite(v).any() else 1.0


def per_case_table(table: pd.DataFrame, task: str, num_classes: int) -> pd.DataFrame:
    """One row per case: the clean metric, each attack at its largest budget, and the worst case, worst first.

    Segmentation: case Dice (slices of a case pooled for 2D models); classification: correct (0/1)
    and, for the clean input, the logit margin.

    Args:
        table: the evaluation's results table (one row per sample x attack x budget).
        task: ``segmentation`` or ``classification``.
        num_classes: number of classes, background included.

    Returns:
        The per-case table, sorted by the worst case (then the clean metric), ascending.
    """
    seg = task == "segmentation"
    k_classes = list(range(1, num_classes))
    key = "case" if seg else "sample"

    def metric(d: pd.DataFrame) -> pd.Series:
        if seg:
            return d.groupby(key).apply(lambda g: _case_dice(g, k_classes), include_groups=False)
        return d.groupby(key)["correct"].apply(lambda s: float(s.astype(float).min()))

    clean = table[table.attack == "clean"]
    out = pd.DataFrame({"clean": metric(clean)})
    if seg and (clean["slice"] >= 0).any():
        out.insert(0, "slices", clean.groupby(key).size())
    if not seg:
        out["clean margin"] = clean.groupby(key)["margin"].min()
    adv = table[table.attack != "clean"]
    cols = []
    for a in adv.attack.unique():
        d = adv[adv.attack == a]
        b = float(d.budget.max())
        col = f"{a} @ {b:g}"
        out[col] = metric(d[d.budget == b])
        cols.append(col)
    if cols:
        out["worst"] = out[cols].min(axis=1)
        out["drop"] = out["clean"] - out["worst"]
        out = out.sort_values(["worst", "clean"])
    else:
        out = out.sort_values(["clean"])
    out.index.name = key
    return out.reset_index()


# ---------------------------------------------------------------------------- page
def _headline_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    if summary["task"] == "segmentation":
        from medrobust.evaluation.report import case_stats

        sliced = "case_dice" in summary["clean"]
        header = ["attack", "budget", "case Dice (mean)", "sd", "median", "cases", "pooled Dice"]
        if sliced:
            header += ["per-slice Dice (mean)", "slices"]
        rows = []
        for a, per in [("clean", {"0": summary["clean"]})] + list(summary["attacks"].items()) + [("worst case", summary["worst_case"])]:
            for b, s in per.items():
                c = case_stats(s)
                r = [a, float(b), c["mean"], c["sd"], c["median"], c["n"], s["pooled_dice_mean"]]
                if sliced:
                    r += [s["dice"]["mean"], s["dice"]["n"]]
                rows.append(r)
        return header, rows
    header = ["attack", "budget", "accuracy", "balanced accuracy", "AUC", "samples"]
    rows = []
    for a, per in [("clean", {"0": summary["clean"]})] + list(summary["attacks"].items()) + [("worst case", summary["worst_case"])]:
        for b, s in per.items():
            rows.append([a, float(b), s["accuracy"], s["balanced_accuracy"], s["auc"], s["correct"]["n"]])
    return header, rows


def render(summary: dict[str, Any], per_case: Optional[pd.DataFrame], files: dict[str, str]) -> str:
    """The report page as a string.

    Args:
        summary: the evaluation summary (as written to ``summary.json``).
        per_case: the per-case table from :func:`per_case_table` (or None).
        files: plot and table file names relative to the run folder.

    Returns:
        The HTML document.
    """
    s = summary.get("settings", {})
    seg = summary["task"] == "segmentation"
    p = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>medrobust evaluation</title>",
         f"<style>{_CSS}</style></head><body>", "<h1>medrobust robustness evaluation</h1>"]
    ck = html.escape(str(s.get("checkpoint", "")))
    p.append(f"<p>checkpoint <code>{ck}</code>; {html.escape(str(s.get('split', '')))} split, {s.get('n_samples', '?')} samples; "
             f"{s.get('norm')} budgets {html.escape(str(s.get('budgets')))} ({s.get('units')} units).</p>")
    if s.get("grid"):
        inf = s.get("inference", {})
        pred = inf.get("predictor", inf) if isinstance(inf, dict) else inf
        p.append(f"<p>Grid: {html.escape(str(s['grid']))}; inference {html.escape(json.dumps(pred, default=str))}.</p>")
    src = s.get("model_source") or {}
    if src.get("source", "registry") != "registry":
        p.append("<p>model source: " + html.escape(", ".join(f"{k} {v}" for k, v in src.items())) + "</p>")
    if summary.get("flags"):
        p.append("<p class='flag'><b>" + str(len(summary["flags"])) + " sanity flag(s)</b>: see <a href='#flags'>Flags</a>.</p>")
    p.append("<h2 id='summary'>Summary</h2>")
    if seg:
        cap = ("Per-case Dice first (the number to compare with the literature); pooled Dice sums TP / FP / FN over all "
               "samples" + ("; per-slice Dice averages 2D slices, each with the empty-class conventions." if "case_dice" in summary["clean"] else "."))
    else:
        cap = "Accuracy, balanced accuracy and AUC per attack and budget; worst case: per sample over all attacks."
    header, rows = _headline_rows(summary)
    p.append(table_html(header, rows, cls="summary", caption=cap, table_id="summary-table"))
    if summary.get("auc"):
        p.append(table_html(["attack", "normalised area under the metric-budget curve"], [[a, v] for a, v in summary["auc"].items()]))
    if per_case is not None and len(per_case):
        unit = "case" if seg else "sample"
        p.append(f"<h2 id='cases'>Per {unit}</h2>")
        metric = "case Dice" if seg else "correct (1) / wrong (0)"
        p.append(table_html(list(per_case.columns), per_case.itertuples(index=False, name=None), cls="sortable",
                            caption=f"{metric} per {unit}, each attack at its largest budget; worst first. Click a header to sort.",
                            table_id="per-case"))
    p.append("<h2 id='settings'>Settings</h2>")
    rows = []
    for k in ("checkpoint", "split", "n_samples", "norm", "units", "budgets", "bounds", "metrics", "seed", "success"):
        if k in s:
            rows.append([k, json.dumps(s[k], default=str) if not isinstance(s[k], str) else s[k]])
    if "model" in s:
        rows.append(["model", str(s["model"].get("name", s["model"])) if isinstance(s["model"], dict) else str(s["model"])])
    for a in s.get("attacks", []):
        rows.append([f"attack {a.get('label', a.get('name'))}", json.dumps({k: v for k, v in a.items() if k not in ("label",)}, default=str)])
    p.append(table_html(["setting", "value"], rows, left=2, table_id="settings-table"))
    p.append("<h2 id='flags'>Flags</h2>")
    if summary.get("flags"):
        p.append("<ul>" + "".join(f"<li class='flag'>{html.escape(f)}</li>" for f in summary["flags"]) + "</ul>")
    else:
        p.append("<p>No sanity flag was raised.</p>")
    t = summary.get("time_s", {})
    if t:
        p.append("<h2 id='timing'>Timing</h2>")
        p.append(table_html(["part", "seconds"], [[k, float(v)] for k, v in t.items()], table_id="timing-table"))
    for key, title in (("curve", "Metric versus budget"), ("per_class", "Per class"), ("distributions", "Per-case distributions"),
                       ("severity", "Acquisition artefacts: metric versus severity"),
                       ("examples_strongest", "Examples (strongest attack, largest budget)")):
        if key in files:
            p.append(f"<h2>{title}</h2><img src='{html.escape(files[key])}' alt='{html.escape(title)}'>")
    arts = [(k.split(":", 1)[1], v) for k, v in files.items() if k.startswith("artefact_examples:")]
    if arts:
        p.append("<h2 id='artefact-examples'>Worst cases per artefact (highest severity)</h2>")
        p += [f"<h3>{html.escape(a)}</h3><img src='{html.escape(v)}' alt='{html.escape(a)}'>" for a, v in arts]
    links = [("results.csv", "every sample x attack x budget"), ("per_case.csv", "the per-case table above"),
             ("summary.json", "the summary")]
    p.append("<h2 id='files'>Files</h2><ul>" + "".join(f"<li><a href='{f}'>{f}</a>: {d}</li>" for f, d in links
                                                          if f != "per_case.csv" or per_case is not None) + "</ul>")
    p.append(f"<script>{_SORT_JS}</script></body></html>")
    return "\n".join(p)


def write_html_report(run_dir: Path, table: pd.DataFrame, summary: dict[str, Any], files: dict[str, str], num_classes: int) -> None:
    """Write ``per_case.csv`` and ``report.html`` into ``run_dir`` (atomically).

    Args:
        run_dir: the evaluation's folder.
        table: the results table.
        summary: the summary.
        files: plot file names relative to ``run_dir``.
        num_classes: number of classes, background included.
    """
    from medrobust.utils import write_text_atomic

    per_case = None
    try:
        per_case = per_case_table(table, summary["task"], num_classes)
        write_text_atomic(run_dir / "per_case.csv", per_case.to_csv(index=False))
    except (KeyError, ValueError) as exc:  # a table without the per-case columns: the page is still written
        import logging

        logging.getLogger(__name__).warning("no per-case table in the report: %s", exc)
    write_text_atomic(run_dir / "report.html", render(summary, per_case, files))
