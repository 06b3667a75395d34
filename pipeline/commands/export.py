"""``export``: a bundle's trained network as ONNX, checked against the eager network under onnxruntime."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from pipeline.errors import CommandError


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.inference.export import EXTRA_PACKAGES, check_onnx, describe_inputs, export_onnx, load_network
    from pipeline.io import check_not_input

    missing = [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"ONNX export needs {', '.join(missing)}: pip install 'neurofusion[export]'")
    bundle = Path(args.bundle)
    if not (bundle / "configs" / "metadata.json").is_file():
        raise CommandError(f"{bundle}: not a bundle (no configs/metadata.json)")
    ckpt = Path(args.ckpt_file) if args.ckpt_file else bundle / "models" / "model.pt"
    if not ckpt.is_file():
        raise CommandError(f"{ckpt}: no checkpoint; train the bundle first or give --ckpt-file")
    out = Path(args.out or bundle / "models" / "model.onnx")
    configs = bundle / "configs"
    check_not_input(
        out,
        {"the checkpoint": ckpt, "the config": configs / args.config_file, "the metadata": configs / "metadata.json"},
    )
    network, meta = load_network(bundle, ckpt, args.config_file, args.key_in_ckpt)
    out = export_onnx(network, meta, out, args.opset)
    print(f"wrote {out}: inputs {describe_inputs(meta)}; outputs {', '.join(meta['network_data_format']['outputs'])}")
    difference = check_onnx(out, network, meta)
    print(f"onnxruntime matches the eager network on random inputs (max |difference| {difference:.2g})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained bundle network to ONNX (all its inputs) and check it with onnxruntime",
        description="Write a bundle's trained network (network_def + checkpoint) as ONNX with the inputs and "
        "outputs its metadata names (network_data_format: image, and series for the fused model), batch axis "
        "dynamic, then run it under onnxruntime on random inputs and compare with the PyTorch network; exit 1 "
        "when they differ. TorchScript export is MONAI's own: python -m monai.bundle ckpt_export. Needs the "
        "optional packages of neurofusion[export] (onnx, onnxscript, onnxruntime).",
    )
    p.add_argument("bundle", help="bundle folder (e.g. bundles/mri_fmri_fusion)")
    p.add_argument("--ckpt-file", help="checkpoint (default BUNDLE/models/model.pt)")
    p.add_argument("--key-in-ckpt", default="", help="key of the weights in a nested checkpoint (e.g. model)")
    p.add_argument("--config-file", default="inference.yaml", help="config defining network_def (default %(default)s)")
    p.add_argument("--out", help="ONNX file (default BUNDLE/models/model.onnx)")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.set_defaults(func=cmd_export)
