"""Training: learns the synthetic set offline, writes its files, resumes exactly."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.errors import NonFiniteError, OutputError, UsageError
from resprobe.training import Recipe, TrainRun, train


def _data():
    return load_dataset("synthetic(n=600)", "train"), load_dataset("synthetic(n=200)", "test")


def test_tiny_run_learns_and_writes_files(tmp_path):
    tr, te = _data()
    torch.manual_seed(0)
    model = build_model("cifar_resnet8", num_classes=tr.num_classes)
    df = train(model, tr, te, Recipe(6, schedule="cosine"), tmp_path, TrainRun(progress_bar=False))
    assert list(df.epoch) == list(range(6))
    assert df.test_error.iloc[-1] < 0.35  # chance is 0.75 with 4 classes
    assert df.train_loss.iloc[-1] < df.train_loss.iloc[0]
    on_disk = pd.read_csv(tmp_path / "metrics.csv")
    assert on_disk.shape[0] == 6 and set(on_disk.columns) >= {"epoch", "train_loss", "train_error", "test_loss",
                                                               "test_error", "seconds"}
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "config.json").is_file() and (tmp_path / "last.pt").is_file()


def test_resume_equals_uninterrupted(tmp_path):
    tr, te = _data()
    torch.manual_seed(1)
    a = build_model("cifar_resnet8(width=8)", num_classes=4)
    init = {k: v.clone() for k, v in a.state_dict().items()}
    full = train(a, tr, te, Recipe(3, seed=5), tmp_path / "a", TrainRun(progress_bar=False))
    d = build_model("cifar_resnet8(width=8)", num_classes=4)
    d.load_state_dict(init)
    _killed_after_two_epochs(d, tr, te, tmp_path / "d")
    assert torch.load(tmp_path / "d" / "last.pt", weights_only=True)["epoch"] == 1
    e = build_model("cifar_resnet8(width=8)", num_classes=4)  # fresh init: everything comes from last.pt
    resumed = train(e, tr, te, Recipe(3, seed=5), tmp_path / "d", TrainRun(progress_bar=False, resume=True))
    assert list(resumed.epoch) == [0, 1, 2]
    assert all(torch.equal(e.state_dict()[k], a.state_dict()[k]) for k in a.state_dict())
    assert resumed.test_error.tolist() == full.test_error.tolist()


def _killed_after_two_epochs(model, tr, te, out):
    """Run a 3-epoch schedule that is interrupted right after epoch 1's checkpoint."""
    import resprobe.training as T
    calls = {"n": 0}
    orig = T._atomic_save

    def save_then_maybe_stop(obj, path):
        orig(obj, path)
        if path.name == "last.pt":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

    T._atomic_save = save_then_maybe_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(model, tr, te, Recipe(3, seed=5), out, TrainRun(progress_bar=False))
    finally:
        T._atomic_save = orig


def test_resume_without_checkpoint_is_an_error(tmp_path):
    tr, te = _data()
    with pytest.raises(UsageError, match="no checkpoint"):
        train(build_model("cifar_resnet8", num_classes=4), tr, te, Recipe(1), tmp_path, TrainRun(resume=True, progress_bar=False))


def test_existing_run_is_not_overwritten_without_asking(tmp_path):
    tr, te = _data()
    train(build_model("cifar_resnet8", num_classes=4), tr, te, Recipe(1), tmp_path, TrainRun(progress_bar=False))
    before = (tmp_path / "model.pt").read_bytes()
    with pytest.raises(OutputError, match="already holds a training run"):
        train(build_model("cifar_resnet8", num_classes=4), tr, te, Recipe(1), tmp_path, TrainRun(progress_bar=False))
    assert (tmp_path / "model.pt").read_bytes() == before
    train(build_model("cifar_resnet8", num_classes=4), tr, te, Recipe(1, seed=3), tmp_path, TrainRun(progress_bar=False, overwrite=True))
    assert (tmp_path / "model.pt").read_bytes() != before


def test_step_schedule_is_he_et_al_and_warmup_is_linear(tmp_path):
    r = Recipe(8)
    assert [r.lr_factor(e) for e in range(8)] == [1, 1, 1, 1, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2]
    c = Recipe(10, schedule="cosine")
    assert c.lr_factor(0) == 1.0 and abs(c.lr_factor(5) - 0.5) < 1e-12
    tr, te = _data()
    seen = []

    class Spy(torch.optim.AdamW):
        def step(self, *a, **k):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    import resprobe.training as T
    orig = T._optimizer
    T._optimizer = lambda model, rec: Spy(model.parameters(), lr=rec.lr)
    try:
        train(build_model("cifar_resnet8", num_classes=4), tr, te, Recipe(3, lr=1e-3, optimizer="adamw",
                                                                          warmup_epochs=1, batch_size=200),
              tmp_path, TrainRun(progress_bar=False))
    finally:
        T._optimizer = orig
    assert seen[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3]) and seen[3:] == pytest.approx([1e-3] * 3 + [1e-4] * 3)


def test_resume_with_another_recipe_is_refused(tmp_path):
    tr, te = _data()
    cfg = dict(model="cifar_resnet8(width=8)")
    train(build_model("cifar_resnet8(width=8)", num_classes=4), tr, te, Recipe(1, seed=5), tmp_path, TrainRun(progress_bar=False, config=cfg))
    with pytest.raises(ValueError, match=r"another recipe \(lr: 0.1 then, 0.05 now; epochs: 1 then, 2 now\)"):
        train(build_model("cifar_resnet8(width=8)", num_classes=4), tr, te, Recipe(2, lr=0.05, seed=5), tmp_path, TrainRun(progress_bar=False, resume=True, config=cfg))
    with pytest.raises(ValueError, match="train_data.n_images: 600 then, 300 now"):
        train(build_model("cifar_resnet8(width=8)", num_classes=4), tr.subset(300), te, Recipe(1, seed=5), tmp_path, TrainRun(progress_bar=False, resume=True, config=cfg))


def test_diverging_run_stops_with_a_clear_error(tmp_path):
    tr, te = _data()
    torch.manual_seed(0)
    with pytest.raises(NonFiniteError, match="loss is not finite"):
        train(build_model("cifar_plain8", num_classes=4), tr, te, Recipe(3, lr=1e6), tmp_path, TrainRun(progress_bar=False))
    # nothing diverged was committed: every epoch on disk has a finite loss, and last.pt is the last of them
    done = pd.read_csv(tmp_path / "metrics.csv") if (tmp_path / "metrics.csv").exists() else pd.DataFrame()
    assert len(done) < 3 and all(done.get("train_loss", pd.Series(dtype=float)).map(
        lambda v: v == v and abs(v) < float("inf")))
    if len(done):
        assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == len(done) - 1


def test_data_on_another_device_gives_the_same_batches():
    tr, _ = _data()
    moved = tr.to("cpu")
    a = list(tr.batches(64, "cifar10", augment=True, order=torch.Generator().manual_seed(3)))
    b = list(moved.batches(64, "cifar10", augment=True, order=torch.Generator().manual_seed(3)))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1, _), (x2, y2, _) in zip(a, b))
