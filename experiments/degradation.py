"""Degradation (He et al. 2016, Fig. 1): train plain-20, plain-56, ResNet-20 and ResNet-56 with one recipe
(`resprobe train`), plot their training and test error curves, and test whether the deeper plain
network trains worse than the shallower one while the deeper ResNet does not.

    # full run (GPU: four trainings at once, epochs fitted to a time budget)
    python experiments/degradation.py --device cuda --parallel 4 --time-budget 420
    # CPU, a stated number of epochs (measured: about 100 s per epoch of a 20-layer net on 2 cores; 56 layers cost ~3x)
    python experiments/degradation.py --epochs 10
    # CI: tiny nets on the synthetic set, the whole pipeline (15 s on 2 cores)
    python experiments/degradation.py --fast
    # several seeds per network (the verdict about architectures needs at least 2)
    python experiments/degradation.py --device cuda --parallel 4 --seeds 0,1,2 --time-budget 540
    # re-analyse existing runs only
    python experiments/degradation.py --analyse-only

Data: the JPEG CIFAR-10 copy in ../shared/data by default (`--train-data cifar10 --test-data cifar10`
for the real one). Each network trains into ``OUT/<spec>/`` (seed 0) or ``OUT/<spec>-seed<S>/`` (last.pt,
model.pt, metrics.csv, config.json, train.log); an interrupted run resumes where it stopped. Checkpoints stay out of git
(``results/`` is ignored).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("RESPROBE_SHARED", ROOT.parent / "shared")) / "data"
FULL_MODELS = ["cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56"]
FAST_MODELS = ["cifar_plain8", "cifar_plain14", "cifar_resnet8", "cifar_resnet14"]
HE_EPOCHS = 164  # 64k iterations of batch 128 over 50k images


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(FULL_MODELS), help="comma-separated specs (default: %(default)s)")
    p.add_argument("--train-data", default=f"imagefolder:{SHARED / 'cifar10-jpeg-train.tar.gz'}")
    p.add_argument("--test-data", default=f"imagefolder:{SHARED / 'cifar10-jpeg-test.tar.gz'}")
    p.add_argument("--data-root", help="folder of cifar10 (for --train-data cifar10)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per network (ignored with --time-budget)")
    p.add_argument("--time-budget", type=float,
                   help="seconds for the whole run: time the networks' steps first, then train as many epochs "
                        "as fit (at most --max-epochs); stops cleanly at the budget")
    p.add_argument("--max-epochs", type=int, default=HE_EPOCHS)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--schedule", default="step", choices=["step", "cosine"])
    p.add_argument("--normalize", default="imagenet")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once (4 on a GPU)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds; each network is trained once per seed "
                                                 "(the verdict needs at least 2 for a claim about the architectures)")
    p.add_argument("--fast", action="store_true", help="CI: depth 8/14 nets, synthetic data, 4 epochs")
    p.add_argument("--analyse-only", action="store_true", help="no training: analyse the runs in --out")
    p.add_argument("--out", default=str(ROOT / "results" / "degradation"))
    p.add_argument("--calibrate-seconds", type=float, default=15.0, help=argparse.SUPPRESS)
    p.add_argument("--calibrate", help=argparse.SUPPRESS)  # internal: time training steps of one spec
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    args.seed = args.seeds[0]
    if args.fast:
        args.models, args.epochs, args.time_budget, args.lr, args.schedule = FAST_MODELS, 4, None, 0.05, "cosine"
        args.train_data, args.test_data = "synthetic(n=768,size=16)", "synthetic(n=256,size=16)"
        args.normalize = "none"
        args.out = args.out if args.out != str(ROOT / "results" / "degradation") else str(ROOT / "results" /
                                                                                          "degradation-fast")
    return args


def load(args):
    from resprobe.loading import load_data
    return (load_data(args.train_data, "train", args.data_root), load_data(args.test_data, "test", args.data_root))


def calibrate(args) -> int:
    """Time training steps of one network for ``--calibrate-seconds`` after 10 warm-up steps (all networks
    are timed at once, so the rate includes their contention); print JSON seconds/step."""
    import torch
    import torch.nn.functional as F
    from resprobe.loading import load_model
    tr, _ = load(args)
    dev = torch.device(args.device)
    model, _ = load_model(args.calibrate, num_classes=tr.num_classes, in_channels=tr.input_shape[0])
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = tr.to(dev) if dev.type != "cpu" else tr
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield from data.batches(128, args.normalize, dev, augment=True, shuffle=True, generator=g)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0, timed = None, 0
    for step, (x, y, _) in enumerate(batches()):
        if step == 10:
            sync()
            t0 = time.time()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t0 is not None:
            timed += 1
            if timed % 10 == 0:
                sync()
                if time.time() - t0 > args.calibrate_seconds:
                    break
    print(json.dumps(dict(model=args.calibrate, seconds_per_step=(time.time() - t0) / timed, steps=timed)))
    return 0


def _child_env(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TQDM_MININTERVAL=os.environ.get("TQDM_MININTERVAL", "30"))  # logs, not a terminal
    if args.parallel > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // args.parallel))
    return env


def _run_all(cmds: list[tuple[str, list[str], Path]], parallel: int, env, deadline: float | None) -> dict:
    """Run ``(name, argv, log)`` commands, ``parallel`` at a time; stop everything at ``deadline``."""
    pending, running, status = list(cmds), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name, argv, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            fh = open(log, "a")
            running[name] = (subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env), fh)
        for name, (proc, fh) in list(running.items()):
            if proc.poll() is not None:
                fh.close()
                status[name] = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see log)"
                del running[name]
        if deadline is not None and time.time() > deadline:
            for name, (proc, fh) in running.items():
                proc.terminate()
                proc.wait()
                fh.close()
                status[name] = "stopped at the time budget"
            for name, _, _ in pending:
                status[name] = "not started (time budget)"
            break
        time.sleep(0.5)
    return status


def main(argv=None) -> int:
    args = parse(argv)
    if args.calibrate:
        return calibrate(args)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tr, te = load(args)  # also fills the decoded-image cache for the child processes
    print(f"data: {tr.spec} ({len(tr)} train), {te.spec} ({len(te)} test)", flush=True)
    env = _child_env(args)
    run = dict(models=args.models, device=args.device, parallel=args.parallel, seed=args.seed,
               time_budget=args.time_budget, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    status = {}
    if not args.analyse_only:
        epochs, deadline = args.epochs, None
        if args.time_budget:
            deadline = t_start + args.time_budget
            cal = _run_all([(m, [sys.executable, __file__, "--calibrate", m, "--device", args.device,
                                 "--train-data", args.train_data, "--test-data", args.test_data,
                                 "--normalize", args.normalize] + (["--data-root", args.data_root] if args.data_root
                                                                   else []), out / f"calibrate-{m}.log")
                            for m in args.models], args.parallel, env, deadline)
            rates = {}
            for m in args.models:
                lines = [ln for ln in (out / f"calibrate-{m}.log").read_text().splitlines() if ln.startswith("{")]
                if not lines:
                    raise SystemExit(f"calibration of {m} failed ({cal.get(m)}): see {out / f'calibrate-{m}.log'}")
                rates[m] = json.loads(lines[-1])["seconds_per_step"]
            steps = math.ceil(len(tr) / 128)
            # one epoch = the training steps + a test pass (~1/3 of a step's cost per image, 1/5 as many images)
            epoch_s = {m: r * (steps + steps * len(te) / len(tr) / 3) for m, r in rates.items()}
            waves = math.ceil(len(args.models) * len(args.seeds) / args.parallel)
            slowest = max(epoch_s.values()) * waves
            left = deadline - time.time() - 60  # keep a minute for the analysis
            epochs = max(1, min(args.max_epochs, int(0.9 * left / slowest)))
            run.update(calibration_seconds_per_step=rates, estimated_epoch_seconds=epoch_s)
            print(f"calibrated s/step {json.dumps({k: round(v, 4) for k, v in rates.items()})}; "
                  f"{epochs} epochs fit in {left:.0f} s", flush=True)
            deadline -= 45  # stop training in time for the analysis
        run["epochs"] = epochs
        cmds = []
        for m in args.models:
            for seed in args.seeds:
                d = _run_dir(out, m, seed)
                argv_ = [sys.executable, "-m", "resprobe", "train", "--model", m, "--data", args.train_data,
                         "--test-data", args.test_data, "--epochs", str(epochs), "--lr", str(args.lr), "--schedule",
                         args.schedule, "--normalize", args.normalize, "--device", args.device, "--seed",
                         str(seed), "--out", str(d), "--quiet"]
                if args.data_root:
                    argv_ += ["--data-root", args.data_root]
                if (d / "last.pt").is_file():
                    argv_.append("--resume")
                cmds.append((f"{m}/seed{seed}", argv_, d / "train.log"))
                print(" ".join(argv_[1:]), flush=True)
        t0 = time.time()
        status = _run_all(cmds, args.parallel, env, deadline)
        run.update(train_status=status, train_seconds=round(time.time() - t0, 1))
        print(f"training: {json.dumps(status)} in {time.time() - t0:.0f} s", flush=True)
    runs = [_run_dir(out, m, s) for m in args.models for s in args.seeds
            if (_run_dir(out, m, s) / "metrics.csv").is_file()]
    if not runs:
        raise SystemExit(f"no finished epochs in {out}: see the train.log files")
    from resprobe.engine import RunSpec, resolve_device
    from resprobe.probes import degradation
    from resprobe.report import save
    res = degradation.run(runs, tr, te, RunSpec(batch_size=512, device=str(resolve_device(args.device)),
                                                seed=args.seed, progress=False))
    res.provenance["run"] = dict(res.provenance["run"], **run)
    save(res, out)
    print(res.detail.final.to_string(index=False))
    print(res.detail.comparisons.to_string(index=False))
    v = res.verdicts[0]
    print(f"verdict: {v.verdict} — {v.reason}")
    print(f"report: {out / 'report.html'}  ({time.time() - t_start:.0f} s in all)")
    return 0


def _run_dir(out: Path, model: str, seed: int) -> Path:
    return out / model if seed == 0 else out / f"{model}-seed{seed}"


if __name__ == "__main__":
    raise SystemExit(main())
