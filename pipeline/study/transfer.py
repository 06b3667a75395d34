"""Transfer between the cohorts of a study: pretrain an MRI encoder on one cohort, start another's models from it.

For each ``transfer`` entry of a study (:class:`~pipeline.study.spec.Transfer`), the source cohort's ``model`` is
trained once per study, on every row of the source cohort (minus the subjects ``exclude_shared`` leaves out) with the
source cohort's overrides and a stratified validation share (``cv.val_fraction``, for the checkpoint choice), in
``RUN/pretrain/<source>_<model>/``. The target cohort's MRI-reading models (bundles with the key
``mri_encoder_weights``) then run once per transfer mode: ``none`` (from scratch), ``finetune`` and ``frozen`` (bundle
keys ``mri_encoder_weights`` / ``mri_encoder_freeze``), a study dimension like augmentation.

The target models must read the T1 as the pretraining did (:data:`INPUT_KEYS`); a difference is refused.

Shared subjects: a subject of the target cohort also in the source cohort (same ``subject_id`` ignoring case, or the
same image file by resolved path) would leak its test labels into the encoder; the study is refused before its run
folder exists, naming them, unless ``exclude_shared`` leaves them out of the pretraining. Subjects shared by two
cohorts not linked by a transfer are only a warning (log and report). Both go to ``RUN/shared_subjects.csv``.

A pretraining job trains in a folder of its own shard (``RUN/pretrain/.<name>.shard-i-of-n``) and is renamed into
place with its ``done.json`` inside, so a killed job is redone and shards that need the same encoder never write into
one folder: each trains it if it is not there yet, and the first to finish wins (the others' identical copy is
dropped).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.data.manifest import (
    PATH_COLUMNS,
    fold_manifest,
    load_manifest,
    read_manifest,
    subject_table,
    write_manifest,
)
from pipeline.engine.workflow import run_bundle
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.study.spec import Study, StudyError, Transfer

LOG = logging.getLogger(__name__)
PRETRAIN = Path("pretrain")
SHARED = "shared_subjects.csv"
SHARED_COLUMNS = ["cohort", "subject_id", "other_cohort", "other_subject_id", "reason", "action"]
#: bundle keys of the pretraining that are not the source cohort's to set (it trains from scratch, its own rows)
NOT_INHERITED = ("mri_encoder_weights", "mri_encoder_freeze", "augment")
MAX_NAMED = 10
#: bundle keys that define what the MRI encoder sees: pretraining and target models must agree on them
INPUT_KEYS = ("mri_spatial_size", "mri_pixdim", "mri_registration", "mri_registration_mm", "mri_brain_mask")


@dataclass(frozen=True)
class PretrainJob:
    """The training of ``model`` on all of cohort ``source`` whose MRI encoder other cohorts start from."""

    source: str
    model: str

    @property
    def name(self) -> str:
        return f"{self.source}_{Path(self.model).name}"

    @property
    def job_dir(self) -> Path:
        return PRETRAIN / self.name

    @property
    def weights(self) -> Path:
        """The pretrained model (relative to the run folder)."""
        return self.job_dir / "ckpt" / "model.pt"


def pretrain_job(transfer: Transfer) -> PretrainJob:
    return PretrainJob(transfer.source, transfer.model)


def modes(study: Study, cohort: str, model: str) -> tuple[str, ...]:
    """Transfer modes a model of a cohort runs in: the transfer's modes for the target's MRI-reading models,
    ``("none",)`` otherwise."""
    transfer = study.transfer_to(cohort)
    return transfer.modes if transfer and study.takes_mri_encoder(model) else ("none",)


def job_overrides(study: Study, cohort: str, mode: str, out: Path) -> dict:
    """Bundle keys of a fold job in transfer ``mode`` (none for ``none``)."""
    if mode == "none":
        return {}
    job = pretrain_job(study.transfer_to(cohort))
    return {"mri_encoder_weights": str(Path(out) / job.weights), "mri_encoder_freeze": mode == "frozen"}


def job_record(study: Study, cohort: str, mode: str) -> dict:
    """Columns of a fold job's ``done.json`` naming where its encoder came from (empty without transfer)."""
    transfer = study.transfer_to(cohort) if mode != "none" else None
    return {"transfer_from": transfer.source if transfer else "", "transfer_model": transfer.model if transfer else ""}


def needed(study: Study, jobs: Iterable) -> list[PretrainJob]:
    """The pretraining jobs that fold ``jobs`` (with a ``transfer`` mode) start from, in order, once each."""
    wanted = (pretrain_job(study.transfer_to(j.cohort)) for j in jobs if j.transfer != "none")
    return list(dict.fromkeys(wanted))


# --- shared subjects ------------------------------------------------------------------------------------


def _identities(frame: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """subject_id (lower case) -> subject_id, and resolved image path -> subject_id."""
    ids = {str(s).lower(): str(s) for s in frame["subject_id"]}
    images = {
        str(Path(value).resolve()): str(subject)
        for column in PATH_COLUMNS
        if column in frame.columns
        for subject, value in zip(frame["subject_id"], frame[column])
        if value
    }
    return ids, images


def shared_subjects(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(subject of ``a``, subject of ``b``, reason) for every subject of ``a`` found in ``b``: the same
    ``subject_id`` ignoring case, or the same image file (resolved path)."""
    (a_ids, a_images), (b_ids, b_images) = _identities(a), _identities(b)
    found = {a_ids[key]: (b_ids[key], "same subject_id") for key in a_ids.keys() & b_ids.keys()}
    for image in sorted(a_images.keys() & b_images.keys()):
        found.setdefault(a_images[image], (b_images[image], f"same image {image}"))
    return [(subject, other, reason) for subject, (other, reason) in sorted(found.items())]


def _named(pairs: Sequence[tuple[str, str, str]]) -> str:
    """``sub-01, sub-02 (same image /data/x.nii.gz as sub-B2)`` for (subject, other subject, reason) triples."""

    def one(subject: str, other: str, reason: str) -> str:
        if reason == "same subject_id":
            return subject if subject == other else f"{subject} (as {other})"
        return f"{subject} ({reason} as {other})"

    text = ", ".join(one(*pair) for pair in pairs[:MAX_NAMED])
    return text + (f" and {len(pairs) - MAX_NAMED} more" if len(pairs) > MAX_NAMED else "")


@dataclass
class TransferPlan:
    """What a study's transfers need, worked out before its run folder exists."""

    manifests: dict[PretrainJob, pd.DataFrame] = field(default_factory=dict)  # pretraining rows (split train/val)
    excluded: dict[PretrainJob, list[str]] = field(default_factory=dict)  # source subjects left out
    shared: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SHARED_COLUMNS))

    @property
    def warnings(self) -> list[str]:
        """One line per pair of cohorts sharing subjects without a transfer between them."""
        rows = self.shared[self.shared["action"] == "warned"]
        return [
            f"cohorts {a} and {b} share {len(part)} subject(s), counted in both: "
            + _named(list(zip(part["subject_id"], part["other_subject_id"], part["reason"])))
            for (a, b), part in rows.groupby(["cohort", "other_cohort"], sort=False)
        ]


def plan_transfer(study: Study) -> TransferPlan:
    """Check every pair of cohorts for shared subjects and build each pretraining manifest.

    Raises:
        StudyError: a transfer's target shares subjects with its source (and ``exclude_shared`` is off), naming
            them; or a source cohort cannot give a stratified validation share.
        ManifestError: a source manifest is invalid.
    """
    frames = {cohort.name: read_manifest(cohort.manifest) for cohort in study.cohorts}
    links = {(t.target, t.source): t for t in study.transfer}
    plan, rows = TransferPlan(), []
    names = list(frames)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            transfer = links.get((a, b)) or links.get((b, a))
            target, source = (transfer.target, transfer.source) if transfer else (a, b)
            pairs = shared_subjects(frames[target], frames[source])
            if transfer and pairs and not transfer.exclude_shared:
                raise StudyError(
                    f"{study.path}: transfer.{target}: {len(pairs)} subject(s) of cohort {target} are in cohort "
                    f"{source}, which pretrains its encoder: {_named(pairs)}; remove them from one manifest, or set "
                    f"transfer.{target}.exclude_shared: true to leave them out of the pretraining"
                )
            action = "excluded from pretraining" if transfer else "warned"
            rows += [(target, s, source, o, r, action) for s, o, r in pairs]
            if transfer:
                job = pretrain_job(transfer)
                plan.excluded.setdefault(job, []).extend(o for _, o, _ in pairs)
    plan.shared = pd.DataFrame(rows, columns=SHARED_COLUMNS)
    for transfer in study.transfer:
        check_inputs(study, transfer)
        job = pretrain_job(transfer)
        if job not in plan.manifests:
            plan.manifests[job] = pretrain_manifest(study, transfer, sorted(set(plan.excluded.get(job, []))))
    return plan


def effective_keys(study: Study, cohort: str, model: str, keys: Sequence[str]) -> dict:
    """Values of bundle ``keys`` in a job of ``model`` on ``cohort``: its ``train.yaml`` under the study's and the
    cohort's overrides."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(study.bundle_dir(model) / "configs" / "train.yaml"))
    parser.update({**study.overrides, **next(c for c in study.cohorts if c.name == cohort).overrides})
    return {key: parser.get_parsed_content(key) for key in keys if key in parser}


def check_inputs(study: Study, transfer: Transfer) -> None:
    """Refuse a transfer whose target models would feed the pretrained encoder another input than it learned from
    (another grid, voxel size, registration or brain mask: :data:`INPUT_KEYS`).

    Raises:
        StudyError: naming the model, the key and both values.
    """
    source = effective_keys(study, transfer.source, transfer.model, INPUT_KEYS)
    target_models = next(c for c in study.cohorts if c.name == transfer.target).models
    for model in filter(study.takes_mri_encoder, target_models):
        target = effective_keys(study, transfer.target, model, INPUT_KEYS)
        for key in (k for k in INPUT_KEYS if k in source and k in target and source[k] != target[k]):
            raise StudyError(
                f"{study.path}: transfer.{transfer.target}: {model} on cohort {transfer.target} reads {key} "
                f"{target[key]!r}, the encoder pretrained on cohort {transfer.source} {source[key]!r}; set the same "
                "value in both cohorts' overrides"
            )


def pretrain_manifest(study: Study, transfer: Transfer, excluded: Sequence[str]) -> pd.DataFrame:
    """Every row of the source cohort but the ``excluded`` subjects, with a stratified validation share
    (``cv.val_fraction``, at least one subject per class) and the rest ``train``."""
    source = next(c for c in study.cohorts if c.name == transfer.source)
    frame = load_manifest(source.manifest, require_diagnosis=True)
    frame = frame[~frame["subject_id"].isin(set(excluded))]
    frame.attrs["path"] = str(source.manifest)
    everyone = subject_table(frame).assign(repeat=0, fold=0)
    try:  # no subject is in test fold 1 of this one-fold table: all of them are training (or validation) rows
        return fold_manifest(frame, everyone, 0, 1, study.val_fraction or 0.2, study.seed)
    except ValueError as err:
        raise StudyError(
            f"{study.path}: transfer.{transfer.target}: pretraining on cohort {source.name}: {err}"
        ) from None


def write_records(plan: TransferPlan, out: Path) -> None:
    """``RUN/shared_subjects.csv``, and a log warning per pair of cohorts that share subjects without a transfer."""
    atomic_write_text(Path(out) / SHARED, plan.shared.to_csv(index=False))
    for line in plan.warnings:
        LOG.warning("%s", line)


def load_shared(out: Path) -> pd.DataFrame:
    """``RUN/shared_subjects.csv`` (empty for a run without it)."""
    path = Path(out) / SHARED
    if not path.is_file():
        return pd.DataFrame(columns=SHARED_COLUMNS)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --- pretraining ----------------------------------------------------------------------------------------


def is_done(out: Path, job: PretrainJob) -> bool:
    return (Path(out) / job.job_dir / "done.json").is_file()


def pretrain(study: Study, out: Path, plan: TransferPlan, job: PretrainJob, shard: tuple[int, int] = (0, 1)) -> None:
    """Train pretraining ``job`` (before the fold jobs that start from it) in this shard's private folder, then
    rename that into place: shards that train the same job at once never share a folder.

    Args:
        study: the study.
        out: run folder.
        plan: :func:`plan_transfer` of the study.
        job: the pretraining job.
        shard: ``(i, n)`` of this process (names its private training folder).
    """
    from pipeline.study.runner import in_fresh_folder

    work = Path(out) / PRETRAIN / f".{job.name}.shard-{shard[0]}-of-{shard[1]}"
    in_fresh_folder(work, lambda: _pretrain(study, Path(out), plan, job, work))
    _publish(work, Path(out) / job.job_dir)


def _pretrain(study: Study, out: Path, plan: TransferPlan, job: PretrainJob, work: Path) -> dict:
    """Train ``job`` in ``work``: its manifest, ``ckpt/model.pt``, ``eval/``, ``log.txt``, then ``done.json``."""
    from pipeline.study.runner import cohort_overrides, job_provenance

    source = next(c for c in study.cohorts if c.name == job.source)
    manifest = plan.manifests[job]
    write_manifest(manifest, work / "manifest.csv")
    overrides = {k: v for k, v in cohort_overrides(study, source, out).items() if k not in NOT_INHERITED}
    started = time.perf_counter()
    run_bundle(
        study.bundle_dir(job.model),
        ["train.yaml"],
        "train",
        log_file=work / "log.txt",
        **overrides,
        manifest=str(work / "manifest.csv"),
        output_dir=str(work / "eval"),
        ckpt_dir=str(work / "ckpt"),
        augment=bool(source.overrides.get("augment", False)),
        seed=study.seed,
        cache_dir=str(out / "cache" / Path(job.model).name),
    )
    record = {"source": job.source, "model": job.model, "excluded_subjects": plan.excluded.get(job, [])}
    record.update({f"n_{s}": manifest.loc[manifest["split"] == s, "subject_id"].nunique() for s in ("train", "val")})
    record.update(seed=study.seed, train_seconds=round(time.perf_counter() - started, 2))
    record.update(job_provenance(study, source.manifest, study.bundle_dir(job.model)))
    atomic_write_json(work / "done.json", record)
    return record


def _publish(work: Path, final: Path) -> None:
    """Rename a finished pretraining folder into place; drop it when another shard's copy got there first."""
    try:
        os.rename(work, final)
    except OSError:
        if not (final / "done.json").is_file():
            raise
        shutil.rmtree(work, ignore_errors=True)


def pretrained(out: Path) -> pd.DataFrame:
    """The finished pretraining jobs of a run folder (their ``done.json``), one row each."""
    import json

    rows = [json.loads(p.read_text()) for p in sorted((Path(out) / PRETRAIN).glob("*/done.json"))]
    return pd.DataFrame(rows)
