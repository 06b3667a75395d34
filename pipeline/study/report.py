"""Render a study run folder: tables (``summary.csv``, ``comparisons.csv``), ``report.md`` and ``report.html``.

Both reports carry the same content, built once as a list of blocks: ``report.md`` links the figures written to
``RUN/figures/*.png``, ``report.html`` embeds the same PNGs (base64) so it is one self-contained file. The first
screen answers the paper's two questions, flags collapsed models, gives each model's share of the recoverable signal
(when a cohort has a ceiling), says which models started from an encoder pretrained on another cohort and warns of
subjects shared between cohorts, then shows the summary table (deep models beside their baselines and ceilings) and
the paired comparisons.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.engine.metrics import METRICS
from pipeline.io import atomic_path, atomic_write_text
from pipeline.study.aggregate import (
    ALPHA,
    PRIMARY,
    ceiling_share,
    chance_table,
    compare,
    paper_questions,
    summarise,
    variant,
    with_transfer,
)
from pipeline.study.baselines import load_references
from pipeline.study.figures import METRIC_LABELS, confusion_matrices, fold_metrics, learning_curves, roc_curves
from pipeline.study.runner import Job, cohort_subjects, collect, load_plan, missing_jobs, training_logs
from pipeline.study.transfer import TransferPlan, load_shared, pretrained

PROVENANCE = (
    "git_commit",
    "git_dirty",
    "neurofusion_version",
    "monai_version",
    "torch_version",
    "bundle_version",
    "manifest_sha256",
)
STATS_PACKAGES = ("numpy", "scipy", "sklearn", "pandas")


@dataclass(frozen=True)
class Report:
    """What :func:`render` wrote: file paths, the one-sentence answers, and the planned jobs still missing."""

    paths: dict[str, Path]
    answers: list[str]
    missing: list[Job]


def render(out: str | Path, n_resamples: int = 1000) -> Report:
    """Aggregate whatever jobs of a run folder are finished; write the tables, figures and both reports.

    Args:
        out: run folder of ``neurofusion experiment``.
        n_resamples: subject-bootstrap resamples per cohort x model x augmentation.

    Raises:
        FileNotFoundError: the folder is not a study run or has no finished job.
    """
    out = Path(out)
    plan, references = with_transfer(load_plan(out)), load_references(out)
    results, predictions = (_in_plan_order(with_transfer(frame), plan, references) for frame in collect(out))
    if results.empty:
        raise FileNotFoundError(f"{out}: no finished fold job yet (no folds/*/*/*/done.json)")
    chance = chance_table(cohort_subjects(out))
    summary = ceiling_share(summarise(results, predictions, n_resamples), plan, chance)
    comparisons = compare(results, plan, references)
    paths = {name: out / f"{name}.csv" for name in ("results", "predictions", "summary", "comparisons")}
    for name, frame in zip(paths, (results, predictions, summary, comparisons)):
        atomic_write_text(paths[name], frame.to_csv(index=False))
    logs = with_transfer(training_logs(out))
    figures = _write_figures(out, *(_labelled(f) for f in (results, predictions, logs, summary)), chance)
    answers = [(question, answer(rows, chance)) for question, rows in paper_questions(comparisons, plan)]
    missing = missing_jobs(out)
    planned = len(plan) + len(references)
    blocks = _blocks(results, summary, comparisons, chance, answers, missing, planned, figures, out)
    paths.update(markdown=out / "report.md", html=out / "report.html")
    atomic_write_text(paths["markdown"], _markdown(blocks))
    atomic_write_text(paths["html"], _html(blocks, out))
    return Report(paths, [f"{question} {text}" for question, text in answers], missing)


def _in_plan_order(frame: pd.DataFrame, plan: pd.DataFrame, references: list[Job] = ()) -> pd.DataFrame:
    """Rows sorted by the study's order of cohort x model x augmentation x transfer (stable within a group): per
    cohort the deep models, then its baselines and ceilings; a group planned nowhere (an edited study) last."""
    if frame.empty:
        return frame
    planned = list(zip(plan["cohort"], plan["model"], plan["augment"].astype(bool), plan["transfer"]))
    planned += [(j.cohort, j.model, j.augment, j.transfer) for j in references]
    cohorts = {cohort: i for i, cohort in enumerate(dict.fromkeys(plan["cohort"]))}
    order = {key: (cohorts.get(key[0], len(cohorts)), i) for i, key in enumerate(dict.fromkeys(planned))}
    keys = [
        order.get(key, (len(cohorts), len(order)))
        for key in zip(frame["cohort"], frame["model"], frame["augment"].astype(bool), frame["transfer"])
    ]
    return frame.iloc[sorted(range(len(keys)), key=keys.__getitem__)].reset_index(drop=True)


# --- numbers and sentences ------------------------------------------------------------------------------


def _num(value: float, signed: bool = False) -> str:
    return "–" if not np.isfinite(value) else (f"{value:+.3f}" if signed else f"{value:.3f}")


def _interval(low: float, high: float, signed: bool = False) -> str:
    return "–" if not np.isfinite(low) else f"[{_num(low, signed)}, {_num(high, signed)}]"


def _p(value: float) -> str:
    return "–" if not np.isfinite(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def answer(rows: pd.DataFrame, chance: pd.DataFrame) -> str:
    """One sentence per comparison answering a paper question (primary metric, corrected test)."""
    if rows.empty:
        return "Not answered: the study has no cohort and model for this question."
    return " ".join(_answer_sentence(row, chance.loc[row.cohort, "n_subjects"]) for row in rows.itertuples())


def _answer_sentence(row, n_subjects: int) -> str:
    where = f"{variant(row.model_a, row.transfer_a)} on cohort {row.cohort} ({n_subjects} subjects)"
    if row.note:
        return f"Not answered for {where}: {row.note}."
    metric = METRIC_LABELS[PRIMARY].lower()
    evidence = (
        f"(95% CI {_num(row.ci_low, True)} to {_num(row.ci_high, True)}; corrected p = {_p(row.p)}; "
        f"{row.n_splits} paired splits)"
    )
    if row.significant:
        verdict, verb = ("Yes", "raised") if row.mean_diff > 0 else ("No", "lowered")
        return f"{verdict} for {where}: augmentation {verb} {metric} by {abs(row.mean_diff):.3f} {evidence}."
    if row.ci_low == row.ci_high:  # every paired difference is zero
        same = f"{metric} was identical with and without augmentation in all {row.n_splits} paired splits"
        return f"Not shown for {where}: {same}."
    return (
        f"Not shown for {where}: with augmentation {metric} changed by {_num(row.mean_diff, True)} {evidence}, "
        f"not significant at α = {ALPHA}; the data are compatible with anything from {_num(row.ci_low, True)} to "
        f"{_num(row.ci_high, True)}."
    )


def _share(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{100 * value:.0f}%"


def _collapse_note(summary: pd.DataFrame) -> str:
    """A warning naming every model x augmentation with collapsed fold jobs ("" when there is none)."""
    flagged = summary[summary["n_collapsed"] > 0]
    if flagged.empty:
        return ""
    parts = [
        f"{variant(r.model, r.transfer)} (aug {_aug(r.augment)}, cohort {r.cohort}): {r.n_collapsed} of {r.n_jobs}"
        for r in flagged.itertuples()
    ]
    return (
        "Collapsed models: these fold jobs answered one class for every test subject (a fold holding several "
        "classes), so the model learned a class prior and nothing else; their metrics are kept in the means and "
        "intervals, which therefore describe a partly collapsed model. " + "; ".join(parts) + "."
    )


def _share_table(summary: pd.DataFrame, chance: pd.DataFrame) -> pd.DataFrame:
    """First-screen table of every model with a ceiling: its balanced accuracy, the ceiling's, and the share."""
    rows = summary[summary["ceiling"] != ""]
    scores = summary.set_index(["cohort", "model"])[f"{PRIMARY}_mean"]
    label = METRIC_LABELS[PRIMARY].lower()
    return pd.DataFrame(
        {
            "cohort": rows["cohort"],
            "model": [variant(m, t) for m, t in zip(rows["model"], rows["transfer"])],
            "aug": [_aug(a) if k == "model" else "" for a, k in zip(rows["augment"], rows["kind"])],
            label: [_num(v) for v in rows[f"{PRIMARY}_mean"]],
            "chance": [_num(chance.loc[c, PRIMARY]) for c in rows["cohort"]],
            "ceiling": [f"{_num(scores[(c, m)])} ({m})" for c, m in zip(rows["cohort"], rows["ceiling"])],
            "share of the recoverable signal": [_share(v) for v in rows["share_of_ceiling"]],
        }
    )


MODE_WORDS = {"finetune": "fine-tuned", "frozen": "kept frozen"}


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each model named with its transfer mode (:func:`~pipeline.study.aggregate.variant`), so the
    figures draw one panel or line per model x augmentation x transfer."""
    return (
        frame.assign(model=[variant(m, t) for m, t in zip(frame["model"], frame["transfer"])]) if len(frame) else frame
    )


def _transfer_notes(results: pd.DataFrame, out: Path) -> list[str]:
    """One sentence per target cohort whose models started from a pretrained encoder: which models, which modes,
    from which cohort and pretrained model on how many subjects (and how many shared ones it left out)."""
    started = results[(results["kind"] == "model") & (results["transfer"] != "none")]
    if started.empty:
        return []
    jobs = pretrained(out)
    notes = []
    for (cohort, source), part in started.groupby(["cohort", "transfer_from"], sort=False):
        model = part["transfer_model"].iloc[0]
        row = jobs[(jobs["source"] == source) & (jobs["model"] == model)] if len(jobs) else jobs
        size = (
            f" ({int(row['n_train'].iloc[0])} training + {int(row['n_val'].iloc[0])} validation subjects"
            f"{_excluded_text(row['excluded_subjects'].iloc[0], cohort)})"
            if len(row)
            else ""
        )
        modes = " and ".join(f"{MODE_WORDS[m]} (transfer {m})" for m in dict.fromkeys(part["transfer"]))
        models = ", ".join(dict.fromkeys(part["model"]))
        scratch = (
            (results["cohort"] == cohort) & results["model"].isin(set(part["model"])) & (results["transfer"] == "none")
        ).any()
        notes.append(
            f"Cohort {cohort}: {models} started from the MRI encoder of {model} pretrained on all of cohort "
            f"{source}{size}, {modes}."
            + (
                " Transfer none: trained from scratch, the comparisons of kind transfer test each mode against it."
                if scratch
                else ""
            )
        )
    return notes


def _excluded_text(excluded, cohort: str) -> str:
    count = len(excluded) if isinstance(excluded, list) else 0
    return f"; {count} subject(s) also in cohort {cohort} left out" if count else ""


def _shared_warnings(out: Path) -> list[str]:
    """A warning per pair of cohorts that share subjects without a transfer between them."""
    lines = TransferPlan(shared=load_shared(out)).warnings
    return [
        f"Subjects in two cohorts: {line}; their results are not independent across those cohorts." for line in lines
    ]


def _chance_note(chance: pd.DataFrame, cohorts) -> str:
    parts = [
        f"{cohort} — " + ", ".join(f"{METRIC_LABELS[m]} {chance.loc[cohort, m]:.3f}" for m in METRICS)
        for cohort in cohorts
    ]
    return "Chance (always the majority class): " + "; ".join(parts) + "."


# --- tables ---------------------------------------------------------------------------------------------


def _aug(value) -> str:
    return "on" if bool(value) else "off"


def _test_text(test) -> str:
    return "" if test is None else f"{_num(test.mean_diff, True)} ({_p(test.p)})"


def _summary_table(summary: pd.DataFrame, comparisons: pd.DataFrame, chance: pd.DataFrame) -> pd.DataFrame:
    """First-screen table: every model with CIs, the augmentation test, the test against its baseline, its share
    of the ceiling and its collapsed jobs; the baselines and ceilings; and a chance row per cohort."""
    aug_tests = _primary(comparisons, "augmentation").set_index(["cohort", "model_a", "transfer_a"])
    baseline_tests = _primary(comparisons, "vs_baseline").set_index(["cohort", "model_a", "augment_a", "transfer_a"])
    transfer_tests = _primary(comparisons, "transfer").set_index(["cohort", "model_a", "augment_a", "transfer_a"])
    rows = []
    for cohort, part in summary.groupby("cohort", sort=False):
        for _, r in part.iterrows():
            variant_key = (cohort, r.model, r.transfer)
            test = aug_tests.loc[variant_key] if r.augment and variant_key in aug_tests.index else None
            key = (cohort, r.model, bool(r.augment), r.transfer)
            against = baseline_tests.loc[key] if key in baseline_tests.index else None
            transferred = transfer_tests.loc[key] if key in transfer_tests.index else None
            rows.append(
                {
                    "cohort": cohort,
                    "model": variant(r.model, r.transfer),
                    "aug": _aug(r.augment) if r.kind == "model" else "",
                    "jobs": str(int(r["n_jobs"])),
                    **{METRIC_LABELS[m]: _mean_ci(r, m) for m in METRICS},
                    f"{METRIC_LABELS[PRIMARY]}, pooled [bootstrap CI]": _pooled_ci(r, PRIMARY),
                    "aug on − off (p)": _test_text(test),
                    "− baseline (p)": _test_text(against),
                    **({"transfer − none (p)": _test_text(transferred)} if len(transfer_tests) else {}),
                    "share of ceiling": _share(r.get("share_of_ceiling", np.nan)),
                    "collapsed jobs": f"⚠ {int(r.n_collapsed)} of {int(r.n_jobs)}" if r.n_collapsed else "",
                }
            )
        rows.append(
            {"cohort": cohort, "model": "chance", **{METRIC_LABELS[m]: _num(chance.loc[cohort, m]) for m in METRICS}}
        )
    return pd.DataFrame(rows).fillna("")


def _mean_ci(row: pd.Series, metric: str) -> str:
    return f"{_num(row[f'{metric}_mean'])} {_interval(row[f'{metric}_ci_low'], row[f'{metric}_ci_high'])}"


def _pooled_ci(row: pd.Series, metric: str) -> str:
    return f"{_num(row[f'{metric}_pooled'])} {_interval(row[f'{metric}_boot_low'], row[f'{metric}_boot_high'])}"


def _primary(comparisons: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    rows = comparisons[comparisons["metric"] == PRIMARY]
    return rows if kind is None else rows[rows["kind"] == kind]


def _comparison_table(comparisons: pd.DataFrame, with_metric: bool) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "cohort": comparisons["cohort"],
            "comparison": comparisons["comparison"],
            "metric": [METRIC_LABELS[m] for m in comparisons["metric"]],
            "splits": comparisons["n_splits"],
            "mean a / b": [f"{_num(a)} / {_num(b)}" for a, b in zip(comparisons["mean_a"], comparisons["mean_b"])],
            "difference [95% CI]": [
                f"{_num(d, True)} {_interval(lo, hi, True)}" if np.isfinite(d) else "–"
                for d, lo, hi in zip(comparisons["mean_diff"], comparisons["ci_low"], comparisons["ci_high"])
            ],
            "corrected p": [_p(p) for p in comparisons["p"]],
            "effect size d_z": [_num(e) for e in comparisons["effect_size"]],
            "note": comparisons["note"],
        }
    )
    return table if with_metric else table.drop(columns="metric")


def _metrics_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "model": variant(r.model, r.transfer),
            "aug": _aug(r.augment),
            "metric": METRIC_LABELS[m],
            "mean ± sd": f"{_num(r[f'{m}_mean'])} ± {_num(r[f'{m}_sd'])}",
            "95% CI (splits)": _interval(r[f"{m}_ci_low"], r[f"{m}_ci_high"]),
            "pooled [subject bootstrap 95% CI]": _pooled_ci(r, m),
            "sd across folds": _num(r[f"{m}_sd_folds"]),
            "sd across seeds": _num(r[f"{m}_sd_seeds"]),
        }
        for _, r in summary.iterrows()
        for m in METRICS
    ]
    return pd.DataFrame(rows)


def _missing_table(missing: list[Job]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {"cohort": j.cohort, "model": variant(j.model, j.transfer), "aug": _aug(j.augment), "job": str(j.job_dir)}
            for j in missing
        ]
    )
    grouped = frame.groupby(["cohort", "model", "aug"], sort=False)["job"]
    return grouped.agg(missing="count", example="first").reset_index()


def _environment_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {"field": field, "value": value, "jobs": count}
        for field in PROVENANCE
        if field in results.columns
        for value, count in results[field].astype(str).value_counts().items()
    ]
    return pd.DataFrame(rows)


def _stats_versions() -> str:
    import importlib

    versions = [f"{name} {importlib.import_module(name).__version__}" for name in STATS_PACKAGES]
    return "Statistics computed with " + ", ".join(versions) + "."


# --- figures --------------------------------------------------------------------------------------------


FOLDS_CAPTION = "Test metric of every fold job (box: quartiles; dots: jobs; dotted line: chance)."
CONFUSION_CAPTION = "Confusion matrices of the pooled out-of-fold predictions (counts over repeats and seeds)."
ROC_CAPTION = "One-vs-rest ROC curves of the pooled out-of-fold predictions; the title gives the macro OvR AUC."
LEARNING_CAPTION = (
    "Learning curves: mean over jobs ± sd per epoch; dashed: augmentation on. Validation subjects are carved "
    "from each fold's training partition."
)
REFERENCES = (
    "Baselines and ceiling. Each cohort's baselines are scikit-learn models fitted in the same folds as the deep "
    "models, on each fold's training partition (validation included) and tested on its test fold: PCA (at most 30 "
    "components) and logistic regression on the preprocessed T1's voxels (baseline:mri), logistic regression on the "
    "Fisher-z ROI correlations of the cleaned fMRI series (baseline:fmri), both side by side (baseline:fused); every "
    "scaler and PCA is fitted on training rows only. A deep model is compared with the baseline of its inputs by "
    "split (seeds averaged), with the same corrected test. For a synthetic cohort the ceiling (ceiling:<inputs>) is a "
    "logistic regression on the severities the generator planted in those inputs, fitted in the same folds; a "
    "model's share of the recoverable signal is (BA − chance) / (ceiling BA − chance), chance = 1 / number of "
    "classes, from mean balanced accuracies over jobs. A collapsed fold job answered one class for every test "
    "subject; it is counted in every mean and flagged."
)
METHODS = (
    "How to read this report. Each fold job trains a model on a fold's training partition (its validation share, "
    "used for early stopping and checkpoint choice, is carved from that partition) and tests it on the held-out "
    "fold. 95% CI (splits): Student-t interval of the mean over folds x repeats (training seeds averaged per fold); "
    "it describes the spread of fold estimates and is optimistic, since folds share training subjects. Pooled "
    "[subject bootstrap 95% CI]: the metric of all out-of-fold predictions together, with a percentile interval from "
    "resampling subjects (all predictions of a subject move together). Comparisons are paired by repeat, fold and "
    "seed; the difference is a − b; p and CI come from the corrected resampled t-test of Nadeau & Bengio (2003), "
    "whose variance term s²(1/J + n_test/n_train) accounts for overlapping training sets (J splits; n_train counts "
    "the whole training partition). Effect size d_z = mean difference / sd of the per-split differences. p-values "
    "are two-sided and not adjusted for multiple comparisons: the two questions at the top are the primary tests. "
    "Stability: sd across folds (training seed fixed) and sd across training seeds (fold fixed), pooled."
)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _write_figures(out, results, predictions, logs, summary, chance) -> dict[str, list[tuple[str, str]]]:
    """Write every cohort's figures to ``RUN/figures``; cohort -> [(path relative to RUN, caption)]."""
    figures = {}
    for cohort in summary["cohort"].unique():
        part = summary[summary["cohort"] == cohort]
        pooled_auc = {(r.model, bool(r.augment)): r.auc_ovr_pooled for r in part.itertuples()}
        cohort_logs = logs[logs["cohort"] == cohort]
        drawings = {
            "folds": (fold_metrics(results[results["cohort"] == cohort], chance.loc[cohort]), FOLDS_CAPTION),
            "confusion": (confusion_matrices(predictions[predictions["cohort"] == cohort]), CONFUSION_CAPTION),
            "roc": (roc_curves(predictions[predictions["cohort"] == cohort], pooled_auc), ROC_CAPTION),
        }
        if not cohort_logs.empty:
            drawings["learning_curves"] = (learning_curves(cohort_logs), LEARNING_CAPTION)
        figures[cohort] = []
        for kind, (png, caption) in drawings.items():
            relative = f"figures/{_slug(cohort)}_{kind}.png"
            with atomic_path(out / relative) as tmp:
                tmp.write_bytes(png)
            figures[cohort].append((relative, caption))
    return figures


# --- document -------------------------------------------------------------------------------------------


def _status(missing: list[Job], planned: int) -> str:
    if not missing:
        return f"All {planned} planned fold jobs are finished."
    return (
        f"Incomplete run: {len(missing)} of {planned} planned fold jobs are not finished (listed under Missing jobs); "
        "every number covers finished jobs only."
    )


def _blocks(results, summary, comparisons, chance, answers, missing, planned, figures, out) -> list[tuple]:
    study = out / "study.yaml"
    blocks = [("h1", f"Study report: {results['study'].iloc[0]}"), ("p", _status(missing, planned)), ("h2", "Answers")]
    blocks += [("answer", question, text) for question, text in answers]
    collapsed = _collapse_note(summary)
    blocks += [("warning", collapsed)] if collapsed else []
    blocks += [("warning", line) for line in _shared_warnings(out)]
    transfer_notes = _transfer_notes(results, out)
    blocks += [("h2", "Transfer")] + [("p", note) for note in transfer_notes] if transfer_notes else []
    if (summary["ceiling"] != "").any():
        blocks += [
            ("h2", "Share of the recoverable signal"),
            (
                "p",
                "Balanced accuracy of each model beside the ceiling of its inputs (a model of the planted "
                "severities in the same folds): share = (BA − chance) / (ceiling − chance).",
            ),
            ("table", _share_table(summary, chance)),
        ]
    blocks += [
        ("h2", "Summary"),
        (
            "p",
            "Mean [95% CI over splits] on the test folds; the last columns give the pooled out-of-fold "
            f"{METRIC_LABELS[PRIMARY].lower()} with its subject-bootstrap CI and the corrected test of augmentation.",
        ),
        ("table", _summary_table(summary, comparisons, chance)),
        ("h2", f"Paired comparisons ({METRIC_LABELS[PRIMARY].lower()})"),
        ("table", _comparison_table(_primary(comparisons), with_metric=False)),
        ("p", _chance_note(chance, chance.index)),
    ]
    for cohort in summary["cohort"].unique():
        blocks += _cohort_blocks(cohort, summary, comparisons, chance, figures[cohort])
    if missing:
        blocks += [("h2", "Missing jobs"), ("table", _missing_table(missing))]
    blocks += [("h2", "Methods"), ("p", METHODS), ("p", REFERENCES)]
    blocks += [("h2", "Environment"), ("table", _environment_table(results))]
    blocks += [
        ("p", _stats_versions()),
        ("h2", "Study definition"),
        ("pre", study.read_text() if study.is_file() else ""),
    ]
    return blocks


def _cohort_blocks(cohort, summary, comparisons, chance, figures) -> list[tuple]:
    info = chance.loc[cohort]
    blocks = [
        ("h2", f"Cohort {cohort}: {info['n_subjects']} subjects ({info['classes']})"),
        ("h3", "All metrics"),
        ("table", _metrics_table(summary[summary["cohort"] == cohort])),
        ("p", _chance_note(chance, [cohort])),
    ]
    if (comparisons["cohort"] == cohort).any():
        table = _comparison_table(comparisons[comparisons["cohort"] == cohort], with_metric=True)
        blocks += [("h3", "Paired comparisons"), ("table", table.drop(columns="cohort"))]
    blocks += [("h3", "Figures")] + [("figure", path, caption) for path, caption in figures]
    return blocks


def _markdown(blocks: list[tuple]) -> str:
    render = {
        "h1": lambda text: f"# {text}",
        "h2": lambda text: f"## {text}",
        "h3": lambda text: f"### {text}",
        "p": lambda text: text,
        "answer": lambda question, text: f"> **{question}** {text}",
        "warning": lambda text: f"> ⚠ **{text}**",
        "table": lambda frame: frame.to_markdown(index=False, disable_numparse=True),
        "figure": lambda path, caption: f"![{caption}]({path})\n\n*{caption}*",
        "pre": lambda text: f"```yaml\n{text.rstrip()}\n```",
    }
    return "\n\n".join(render[kind](*content) for kind, *content in blocks) + "\n"


def _html(blocks: list[tuple], out: Path) -> str:
    def image(path: str, caption: str) -> str:
        data = base64.b64encode((out / path).read_bytes()).decode()
        caption = html.escape(caption)
        img = f'<img alt="{caption}" src="data:image/png;base64,{data}">'
        return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"

    render = {
        "h1": lambda text: f"<h1>{html.escape(text)}</h1>",
        "h2": lambda text: f"<h2>{html.escape(text)}</h2>",
        "h3": lambda text: f"<h3>{html.escape(text)}</h3>",
        "p": lambda text: f"<p>{html.escape(text)}</p>",
        "answer": lambda question, text: f'<p class="answer"><b>{html.escape(question)}</b> {html.escape(text)}</p>',
        "warning": lambda text: f'<p class="warning">⚠ {html.escape(text)}</p>',
        "table": lambda frame: frame.to_html(index=False, border=0),
        "figure": image,
        "pre": lambda text: f"<pre>{html.escape(text)}</pre>",
    }
    body = "\n".join(render[kind](*content) for kind, *content in blocks)
    head = f"<meta charset='utf-8'><title>neurofusion study report</title><style>{CSS}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"


CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #bbb;padding:3px 7px}"
    "th{background:#eee}pre{background:#f6f6f6;padding:1em}img{max-width:100%}"
    ".answer{background:#eef5ff;border-left:4px solid #36c;padding:.6em 1em;font-size:1.05em}"
    ".warning{background:#fff4e5;border-left:4px solid #e67e00;padding:.6em 1em}"
    "figcaption{font-size:.85em;color:#555}"
)
