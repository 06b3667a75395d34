"""Recipe variants: one study run per set of bundle keys, on the same folds, compared with a reference variant.

A variants file names a study YAML and the bundle keys each variant adds to the study's ``overrides``::

    study: learnability_study.yaml     # relative to this file
    reference: default                 # the variant every other one is compared with
    variants:
      default: {}
      epochs-30: {epochs: 30}

Every variant runs as a study of its own in ``OUT/<variant>/`` (resumable like any study; the study's baselines
and ceiling only in the reference's); all share one registration cache (``OUT/cache/registration``: content-keyed
and written atomically, so sharing is safe). The folds depend only on the cohort and ``cv``, so the variants' jobs
pair by (cohort, model, augmentation, repeat, fold); the training seeds of a split are averaged, and each variant's
difference from the reference is tested with the corrected resampled t-test of
:func:`pipeline.study.stats.corrected_ttest`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.io import load_yaml
from pipeline.study.aggregate import PRIMARY
from pipeline.study.spec import COHORT_NAME, Study, StudyError, check_overrides, load_study
from pipeline.study.stats import SPLIT, corrected_ttest, t_interval

VARIANT_KEYS = {"study", "reference", "variants", "description"}
JOB_GROUP = ["cohort", "model", "augment"]
TABLE_COLUMNS = [
    "variant", "cohort", "model", "augment", "kind", "n_splits", "balanced_accuracy", "ci_low", "ci_high", "auc_ovr",
    "n_collapsed", "diff_vs_reference", "diff_ci_low", "diff_ci_high", "p", "train_seconds",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Variants:
    """A parsed variants file: the base study, the reference variant's name and each variant's bundle keys."""

    path: Path
    study: Study
    reference: str
    variants: dict[str, dict[str, Any]]


def load_variants(path: str | Path, manifests: dict[str, str] | None = None) -> Variants:
    """Parse a variants file (module docstring); errors name the file and key.

    Args:
        path: the variants YAML.
        manifests: cohort name -> manifest replacing the study's (as ``neurofusion experiment --cohort``).
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: variants file not found")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: expected a mapping with keys study, reference, variants")
    unknown = sorted(set(raw) - VARIANT_KEYS)
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(VARIANT_KEYS))})")
    for key in ("study", "reference", "variants"):
        if key not in raw:
            raise StudyError(f"{path}: missing key '{key}'")
    variants = raw["variants"]
    if not isinstance(variants, dict) or not variants:
        raise StudyError(f"{path}: variants must map variant names to bundle keys")
    checked = {}
    for name, keys in variants.items():
        if not isinstance(name, str) or not COHORT_NAME.fullmatch(name):
            raise StudyError(f"{path}: variants.{name}: a variant name names a folder: letters, digits, '_', '-', '.'")
        checked[name] = check_overrides(keys, f"{path}: variants.{name}")
    if raw["reference"] not in checked:
        raise StudyError(f"{path}: reference {raw['reference']!r} is not a variant (variants: {', '.join(checked)})")
    study = load_study(path.parent / str(raw["study"]), manifests)
    for name, keys in checked.items():
        study.check_keys_known(keys, study.models_of(), f"{path}: variants.{name}")
    return Variants(path, study, raw["reference"], checked)


def variant_study(variants: Variants, name: str) -> Study:
    """The base study with variant ``name``'s bundle keys added to its overrides (and recorded in its YAML text).

    Only the reference variant fits the study's baselines and ceiling: they read the inputs, not the recipe.
    """
    keys = variants.variants[name]
    text = f"{variants.study.text.rstrip()}\n# variant {name} of {variants.path.name}: overrides plus {keys}\n"
    return dataclasses.replace(
        variants.study,
        name=f"{variants.study.name}.{name}",
        overrides={**variants.study.overrides, **keys},
        text=text,
        baselines=variants.study.baselines if name == variants.reference else (),
    )


def run_variants(variants: Variants, out: str | Path, progress: bool = True, n_resamples: int = 1000) -> None:
    """Run every variant's study into ``out/<variant>/`` (finished jobs are kept) and render its report; all share
    one registration cache.

    Args:
        variants: the parsed variants file.
        out: folder of the variants' runs.
        progress: progress bars.
        n_resamples: subject-bootstrap resamples of each variant's report.
    """
    from pipeline.study.report import render
    from pipeline.study.runner import registration_cache, run_study

    out = Path(out)
    shared = out / "cache" / "registration"
    shared.mkdir(parents=True, exist_ok=True)
    for name in variants.variants:
        link = registration_cache(out / name)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(os.path.relpath(shared, link.parent), link)
        run_study(variant_study(variants, name), out / name, progress=progress)
        render(out / name, n_resamples)


def variant_table(variants: Variants, out: str | Path) -> pd.DataFrame:
    """One row per variant x cohort x model x augmentation (and the reference run's baselines and ceilings): the
    primary metric's mean and split interval, AUC, collapsed jobs, and the paired difference from the reference."""
    out = Path(out)
    results = {name: _results(out / name) for name in variants.variants}
    reference = results[variants.reference]
    rows = []
    for name, frame in results.items():
        for group, jobs in frame.groupby(JOB_GROUP, sort=False):
            kind = str(jobs["kind"].iloc[0]) if "kind" in jobs else "model"
            if kind != "model" and name != variants.reference:
                continue  # baselines and ceilings do not depend on the recipe: listed once
            rows.append({"variant": name, **dict(zip(JOB_GROUP, group)), "kind": kind, **_row(jobs, reference, group)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _results(run: Path) -> pd.DataFrame:
    path = run / "results.csv"
    if not path.is_file():
        raise StudyError(f"{run}: no results.csv (run the variants first)")
    return pd.read_csv(path)


def _per_split(jobs: pd.DataFrame, column: str) -> pd.Series:
    return jobs.groupby(SPLIT)[column].mean()


def _row(jobs: pd.DataFrame, reference: pd.DataFrame, group: tuple) -> dict:
    splits = _per_split(jobs, PRIMARY)
    low, high = t_interval(splits.to_numpy())
    row = {
        "n_splits": len(splits),
        "balanced_accuracy": float(splits.mean()),
        "ci_low": low,
        "ci_high": high,
        "auc_ovr": float(_per_split(jobs, "auc_ovr").mean()),
        "n_collapsed": int(jobs["collapsed"].astype(bool).sum()) if "collapsed" in jobs else 0,
        "train_seconds": float(jobs["train_seconds"].mean()) if "train_seconds" in jobs else float("nan"),
    }
    same = reference
    for column, value in zip(JOB_GROUP, group):
        same = same[same[column] == value]
    difference = (splits - _per_split(same, PRIMARY)).dropna() if len(same) else pd.Series(dtype=float)
    ratio = float((jobs["n_test"] / (jobs["n_train"] + jobs["n_val"])).mean())
    test = corrected_ttest(difference.to_numpy(), ratio)
    row.update(diff_vs_reference=test["mean_diff"], diff_ci_low=test["ci_low"], diff_ci_high=test["ci_high"])
    row["p"] = test["p"]
    return row


def markdown(table: pd.DataFrame, reference: str) -> str:
    """The table as Markdown: balanced accuracy [95% CI over splits], AUC, collapsed jobs, difference from the
    reference variant [corrected 95% CI] and its corrected p."""

    def number(value: float, signed: bool = False) -> str:
        return "–" if pd.isna(value) else (f"{value:+.3f}" if signed else f"{value:.3f}")

    lines = [
        "| variant | cohort | model | aug | balanced accuracy [95% CI] | AUC | collapsed "
        f"| vs {reference} [95% CI] | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        compared = row.variant != reference and row.kind == "model"
        low, high = number(row.diff_ci_low, True), number(row.diff_ci_high, True)
        vs = f"{number(row.diff_vs_reference, True)} [{low}, {high}]" if compared else ""
        p = "" if not vs else number(row.p)
        interval = f"{number(row.balanced_accuracy)} [{number(row.ci_low)}, {number(row.ci_high)}]"
        lines.append(
            f"| {row.variant if row.kind == 'model' else '–'} | {row.cohort} | {row.model} | "
            f"{'on' if row.augment else 'off'} | {interval} | {number(row.auc_ovr)} | {row.n_collapsed} | {vs} | {p} |"
        )
    return "\n".join(lines)
