"""How a distributed run leaves its process group (without torchrun: torch.distributed's calls recorded)."""
from __future__ import annotations

import pytest
import torch

from resprobe import cli
from resprobe import distributed as dist
from resprobe.errors import UserError


@pytest.fixture
def calls(monkeypatch):
    log = []
    monkeypatch.setattr(dist, "_ACTIVE", True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a, **k: "gloo")
    monkeypatch.setattr(torch.distributed, "monitored_barrier", lambda *a, **k: log.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *a, **k: log.append("destroy"))
    monkeypatch.setattr(dist, "init", lambda *a, **k: monkeypatch.setattr(dist, "_ACTIVE", True) or True)
    return log


def _run(monkeypatch, fn):
    real = cli.build_parser

    def parser():  # the parsed command runs ``fn`` instead of its own function
        p = real()
        parse = p.parse_args

        def parse_args(argv=None):
            args = parse(argv)
            args.func = fn
            return args
        p.parse_args = parse_args
        return p
    monkeypatch.setattr(cli, "build_parser", parser)
    return cli.main(["info", "--model", "cifar_resnet8", "--random-init"])


def test_a_rank_that_finished_waits_for_the_others_before_leaving(calls, monkeypatch):
    # a rank that left while rank 0 was still writing aborted at exit about one run in five
    assert _run(monkeypatch, lambda args: 0) == 0
    assert calls == ["barrier", "destroy"]


def test_a_rank_that_failed_leaves_without_waiting(calls, monkeypatch):
    def fail(args):
        raise UserError("bad input", "fix it")
    assert _run(monkeypatch, fail) == 2
    assert calls == ["destroy"]
    calls.clear()

    def bug(args):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        _run(monkeypatch, bug)
    assert calls == ["destroy"]
