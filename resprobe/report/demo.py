"""``resprobe demo``: train a small ResNet and its plain twin on procedural images, then the full report
(offline, minutes on a CPU)."""
from __future__ import annotations

from pathlib import Path

from ..engine import RunSpec
from ..loading import load_data, load_model, load_subjects
from ..outputs import claim
from ..progress import note
from .full import full_report

__all__ = ["demo_command"]


def demo_command(args) -> int:
    import torch

    from ..training import Recipe, TrainRun, train
    out = Path(args.out)
    with claim(out):
        train_data = load_data("synthetic(n=2000)", "train")
        test_data = load_data("synthetic(n=500)", "test")
        subjects = []
        for spec_name in (args.model, args.plain):
            torch.manual_seed(args.seed)
            model, prov = load_model(spec_name, num_classes=train_data.num_classes)
            note(f"training {spec_name} on {train_data.spec} for {args.epochs} epochs ...")
            folder = out / "models" / spec_name
            train(model, train_data, test_data, Recipe(args.epochs, lr=0.05, schedule="cosine", seed=args.seed),
                  folder, TrainRun(overwrite=True, progress_bar=not args.quiet,
                                   config=dict(model=spec_name, command="resprobe demo")))
            weights = folder / "model.pt"
            subjects += load_subjects([spec_name], [[str(weights)]], test_data, [spec_name], "none")
        sections = full_report(subjects, test_data, RunSpec(seed=args.seed, progress=not args.quiet),
                                   "fast", out)
    for k, v in sections.items():
        print(f"{k:>20}: {v['verdict']} ({v['seconds']:.1f} s)")
    print(f"report: {(out / 'report.html').resolve()}")
    return 0
