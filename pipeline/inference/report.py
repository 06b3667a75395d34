"""``report.html`` of one prediction: probabilities, the MRI with its saliency overlay, fMRI ROI importance, QC, and
provenance, in one self-contained file (the figure is embedded)."""

from __future__ import annotations

import base64
import html
import io

import nibabel as nib
import numpy as np

RESEARCH_ONLY = (
    "This is a research tool. It is not a medical device and must not be used for diagnosis or any clinical decision."
)
TOP_ROIS = 10
_STYLE = """
body { font-family: sans-serif; max-width: 980px; margin: 2em auto; color: #222; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
tr.warn td { background: #fff3cd; } tr.fail td { background: #f8d7da; }
.bar { background: #4a7ab5; height: .8em; display: inline-block; }
code { font-size: .9em; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def slices_png(mri: np.ndarray, affine: np.ndarray, saliency: np.ndarray) -> bytes:
    """Sagittal, coronal and axial slices of the MRI through the saliency peak, the saliency overlaid (PNG).

    Args:
        mri: the input T1 ``(X, Y, Z)`` as stored.
        affine: its voxel-to-world affine (the slices are shown in the closest RAS orientation).
        saliency: the map on the same grid, in [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    orientation = nib.orientations.io_orientation(affine)
    data, overlay = (nib.orientations.apply_orientation(a, orientation) for a in (mri, saliency))
    zooms = np.empty(3)
    zooms[orientation[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)
    peak = np.unravel_index(int(np.argmax(overlay)), overlay.shape)
    views = [
        ("sagittal", lambda a: a[peak[0]].T, zooms[2] / zooms[1]),
        ("coronal", lambda a: a[:, peak[1]].T, zooms[2] / zooms[0]),
        ("axial", lambda a: a[:, :, peak[2]].T, zooms[1] / zooms[0]),
    ]
    top = float(np.percentile(data[::2, ::2, ::2], 99.5)) or 1.0
    figure = Figure(figsize=(10, 3.6), dpi=90)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.03)
    for index, (name, cut, aspect) in enumerate(views, start=1):
        axis = figure.add_subplot(1, 3, index)
        axis.imshow(cut(data), cmap="gray", origin="lower", vmin=0, vmax=top, aspect=aspect, interpolation="nearest")
        shown = np.ma.masked_less(cut(overlay), 0.2)
        axis.imshow(
            shown, cmap="hot", origin="lower", vmin=0, vmax=1, alpha=0.6, aspect=aspect, interpolation="nearest"
        )
        axis.set_title(name)
        axis.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _rows(cells: list[list], classes: list[str] | None = None) -> str:
    classes = classes or [""] * len(cells)
    return "".join(
        f'<tr class="{c}">' + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row, c in zip(cells, classes)
    )


def _table(header: list[str], cells: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{_rows(cells, classes)}</table>"


def _probabilities(record: dict) -> str:
    cells = [
        [_e(name), f"{p:.3f}", f'<span class="bar" style="width:{200 * p:.0f}px"></span>']
        for name, p in record["probabilities"].items()
    ]
    return _table(["class", "probability", ""], cells)


def _mri_section(record: dict, figure: bytes | None) -> str:
    if figure is None:
        return "<p>No MRI input: no saliency map.</p>"
    encoded = base64.b64encode(figure).decode()
    return (
        f'<img alt="MRI slices with saliency overlay" src="data:image/png;base64,{encoded}" width="900">'
        f"<p>Saliency method <code>{_e(record['saliency_method'])}</code>: {_e(record['saliency_description'])}; "
        "shown above 0.2, in the input MRI's space (<code>saliency.nii.gz</code>). Slices pass through its peak. "
        "Other methods: the bundle key <code>saliency_method</code>.</p>"
    )


def _roi_section(record: dict) -> str:
    rois = record.get("fmri_roi_importance") or []
    if not rois:
        return f"<p>{_e(record.get('fmri_roi_importance_note', 'No fMRI input.'))}</p>"
    top = rois[:TOP_ROIS]
    scale = max(abs(r["importance"]) for r in top) or 1.0
    cells = [
        [
            str(i),
            _e(r["roi"]),
            f"{r['importance']:+.4f}",
            f'<span class="bar" style="width:{150 * max(r["importance"], 0) / scale:.0f}px"></span>',
        ]
        for i, r in enumerate(top, start=1)
    ]
    return (
        _table(["rank", "ROI", "importance", ""], cells)
        + "<p>Importance: drop of the predicted class's log-probability by occlusion, "
        + _e(record["fmri_roi_importance_note"].removeprefix("occlusion: "))
        + "; positive values support the prediction. All ROIs: <code>prediction.json</code>.</p>"
    )


def _qc_section(record: dict) -> str:
    findings = record["qc"]["findings"]
    cells = [[_e(f["modality"]), _e(f["check"]), _e(f["status"]), _e(f["value"]), _e(f["limit"])] for f in findings]
    return _table(["input", "check", "status", "value", "limit"], cells, [f["status"] for f in findings])


def _provenance(record: dict) -> str:
    cells = [
        ["model", _e(record["model"]["name"])],
        ["bundle version", _e(record["model"]["bundle_version"])],
        ["weights sha256", f"<code>{_e(record['model']['weights_sha256'])}</code>"],
    ]
    cells += [
        [f"{_e(m)} input", f"{_e(i['path'])}<br><code>sha256 {_e(i['sha256'])}</code>"]
        for m, i in record["inputs"].items()
    ]
    cells += [["timings", _e(", ".join(f"{k} {v:.2f} s" for k, v in record["timings_seconds"].items()))]]
    return _table(["", ""], cells)


def render(record: dict, figure: bytes | None) -> str:
    """The report of one prediction record (the content of ``prediction.json``) and its slice figure."""
    warnings = record["warnings"]
    flagged = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>neurofusion prediction: {_e(record["subject"])}</title>
<style>{_STYLE}</style></head><body>
<h1>{_e(record["subject"])}: {_e(record["predicted_class"])}</h1>
<p class="warning"><strong>{_e(RESEARCH_ONLY)}</strong></p>
{f'<div class="warning"><strong>Warnings</strong><ul>{flagged}</ul></div>' if warnings else ""}
<h2>Class probabilities</h2>{_probabilities(record)}
<h2>MRI saliency</h2>{_mri_section(record, figure)}
<h2>fMRI ROI importance</h2>{_roi_section(record)}
<h2>Input quality control</h2>{_qc_section(record)}
<h2>Provenance</h2>{_provenance(record)}
<p><small>{_e(RESEARCH_ONLY)}</small></p>
</body></html>
"""
