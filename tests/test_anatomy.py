"""The residual anatomy: decomposition per family, edits against naive model surgery, hygiene."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hooktrace import Trace
from resprobe.anatomy import (AnatomyError, Edits, UnitParts, anatomy, hook_count,
                              preserved_state, register_block, unregister_block)
from resprobe.models import build_model

from conftest import randomize_bn

torchvision = pytest.importorskip("torchvision")

CIFAR_SPECS = ["cifar_resnet20", "cifar_resnet20_b", "cifar_plain20", "cifar_preresnet20", "cifar_preresnet20_b",
               "cifar_preplain20", "cifar_resnet56"]
TV_SPECS = ["torchvision:resnet18", "torchvision:resnet34", "torchvision:resnet50", "torchvision:resnet101",
            "torchvision:resnet152", "torchvision:wide_resnet50_2", "torchvision:resnext50_32x4d"]


def _model(spec, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(build_model(spec), seed).eval()


@pytest.mark.parametrize("spec", CIFAR_SPECS)
def test_decomposition_cifar_family(spec):
    m = _model(spec)
    view = anatomy(m, (3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    assert view.check_decomposition(x) <= 1e-5
    with torch.no_grad():
        assert torch.equal(view(x), m(x))  # the fast path runs the model's own modules


@pytest.mark.parametrize("spec", TV_SPECS)
def test_decomposition_torchvision(spec):
    m = _model(spec)
    view = anatomy(m, (3, 64, 64))
    assert view.check_decomposition(torch.randn(2, 3, 64, 64)) <= 1e-5


@pytest.mark.parametrize("spec,n,kinds", [
    ("torchvision:resnet18", 8, ["identity", "identity", "projection", "identity", "projection", "identity",
                                 "projection", "identity"]),
    ("torchvision:resnet50", 16, ["projection"] + ["identity"] * 2 + ["projection"] + ["identity"] * 3
     + ["projection"] + ["identity"] * 5 + ["projection"] + ["identity"] * 2),
    ("cifar_resnet56", 27, (["identity"] * 9 + ["zeropad"] + ["identity"] * 8) + ["zeropad"] + ["identity"] * 8),
    ("cifar_resnet20_b", 9, ["identity"] * 3 + ["projection", "identity", "identity"] * 2),
    ("cifar_plain20", 9, ["none"] * 9),
])
def test_block_table(spec, n, kinds):
    view = anatomy(build_model(spec))
    assert len(view) == n
    assert [b.shortcut_kind for b in view] == kinds
    assert [b.name for b in view][:2] == ["layer1.0", "layer1.1"]
    # stages follow the parent modules; index_in_stage restarts at each stage
    for b in view:
        assert b.name.startswith(f"layer{b.stage + 1}.{b.index_in_stage}")


def test_shapes_and_downsample_flags():
    view = anatomy(build_model("cifar_resnet20"), (3, 32, 32))
    assert view[0].in_shape == (16, 32, 32) and view["layer2.0"].out_shape == (32, 16, 16)
    assert [b.downsample for b in view] == [False] * 3 + [True, False, False] * 2
    plain = anatomy(build_model("cifar_plain20"), (3, 32, 32))
    assert [plain.deletable(i) for i in range(9)] == [True] * 3 + [False, True, True] * 2


def test_mlp_family_decomposes():
    for residual in (True, False):
        for bn in (True, False):
            m = randomize_bn(build_model(f"mlp(depth=5,width=16,residual={residual},batchnorm={bn})")).eval()
            view = anatomy(m, (1,))
            assert len(view) == 5
            assert view.check_decomposition(torch.randn(7, 1)) <= 1e-5


# --- a user's own model through the adapter ----------------------------------------------------------

class GatedBlock(nn.Module):
    """A user's block: y = tanh(x + 0.5 * lin2(relu(lin1(x))))."""

    def __init__(self, w):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(w, w), nn.Linear(w, w)

    def forward(self, x):
        return torch.tanh(x + 0.5 * self.lin2(F.relu(self.lin1(x))))


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.body = nn.ModuleList([GatedBlock(8) for _ in range(3)])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.embed(x)) * 2.0
        for b in self.body:
            h = b(h)
        return self.out(h.mean(-1, keepdim=True).expand_as(h) + h)


def test_user_block_decomposes_automatically_and_an_adapter_overrides():
    """An unregistered block that adds its input to a branch is read from its own forward; a registered
    adapter takes precedence."""
    net = UserNet().eval()
    view = anatomy(net, (3,))
    assert view.names == ["body.0", "body.1", "body.2"]
    assert [u.kind for u in view] == ["residual"] * 3 and view[0].shortcut_kind == "identity"
    assert view.check_decomposition(torch.randn(5, 3)) <= 1e-6
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(view[1].branch(view.unit_inputs(x)[1]),
                              0.5 * net.body[1].lin2(F.relu(net.body[1].lin1(view.unit_inputs(x)[1]))))
    calls = []
    register_block(GatedBlock, lambda m: calls.append(1) or UnitParts(
        branch=lambda x: 0.5 * m.lin2(F.relu(m.lin1(x))), shortcut=lambda x: x, post=torch.tanh,
        shortcut_kind="identity"))
    try:
        view = anatomy(net, (3,))
        assert calls and view.check_decomposition(torch.randn(5, 3)) <= 1e-5
        # deleting unit 1 = the same net with that block's branch zeroed by hand
        naive = copy.deepcopy(net)
        with torch.no_grad():
            naive.body[1].lin2.weight.zero_()
            naive.body[1].lin2.bias.zero_()
            assert torch.allclose(view(x, Edits(delete=frozenset({1}))), naive(x), atol=1e-6)
    finally:
        unregister_block(GatedBlock)


class ScaledGate(nn.Module):
    """Not residual: the input gates the branch multiplicatively."""

    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(w, w)

    def forward(self, x):
        return x * torch.sigmoid(self.lin(x))


def test_undecomposable_model_names_its_module_types():
    net = nn.Sequential(nn.Linear(3, 8), ScaledGate(8), ScaledGate(8), nn.Linear(8, 2))
    with pytest.raises(AnatomyError) as e:
        anatomy(net)
    msg = str(e.value)
    assert "no residual block" in msg and "ScaledGate" in msg and "register_block" in msg


def test_non_residual_model_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(AnatomyError) as e:
        anatomy(net)
    msg = str(e.value)
    assert "no residual block" in msg and "Conv2d" in msg and "register_block" in msg


def test_bad_block_name_lists_valid_names():
    view = anatomy(build_model("cifar_resnet20"))
    with pytest.raises(AnatomyError) as e:
        view.index("layer9.9")
    assert "layer9.9" in str(e.value) and "layer1.0" in str(e.value) and "layer3.2" in str(e.value)


# --- edits against naive surgery ------------------------------------------------------------------

def _zero_last_branch_layer(model, name):
    """Naive lesion: make the residual branch output exactly zero by zeroing its last layer."""
    blk = dict(model.named_modules())[name]
    if hasattr(blk, "bn3"):  # torchvision Bottleneck
        last = blk.bn3
    elif type(blk).__name__.startswith("PreAct"):  # pre-activation: the branch ends in conv2
        last = blk.conv2
    else:
        last = blk.bn2
    with torch.no_grad():
        for p in last.parameters():
            p.zero_()


@pytest.mark.parametrize("spec,shape", [("cifar_resnet20", (3, 32, 32)), ("cifar_resnet20_b", (3, 32, 32)),
                                        ("cifar_preresnet20", (3, 32, 32)), ("torchvision:resnet50", (3, 64, 64))])
def test_delete_matches_naive_surgery(spec, shape):
    m = _model(spec)
    view = anatomy(m, shape)
    x = torch.randn(3, *shape)
    for keep in ([0], [3], [1, 4, len(view) - 1]):
        names = [view[i].name for i in keep]
        naive = copy.deepcopy(m)
        for n in names:
            _zero_last_branch_layer(naive, n)
        with torch.no_grad():
            ours = view(x, Edits(delete=frozenset(keep)))
            ref = naive(x)
        assert torch.allclose(ours, ref, atol=1e-5, rtol=0), names
        # run from a cached block input: same result as from the image
        with torch.no_grad():
            hs = view.unit_inputs(x)
            first = min(keep)
            assert torch.equal(view.run(hs[first], first, edits=Edits(delete=frozenset(keep))), ours)


def test_plain_delete_is_identity_and_refuses_shape_change():
    m = _model("cifar_plain20")
    view = anatomy(m, (3, 32, 32))
    naive = copy.deepcopy(m)
    naive.layer1[1] = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(view(x, Edits(delete=frozenset({1}))), naive(x))
        with pytest.raises(AnatomyError, match="changes shape"):
            view(x, Edits(delete=frozenset({3})))


def test_branch_swap_matches_swapped_weights():
    m = _model("cifar_resnet20")
    view = anatomy(m, (3, 32, 32))
    naive = copy.deepcopy(m)
    sd = {k: v.clone() for k, v in naive.state_dict().items()}
    a, b = "layer2.1.", "layer2.2."
    swapped = {}
    for k, v in sd.items():
        if k.startswith(a):
            swapped[k] = sd[b + k[len(a):]]
        elif k.startswith(b):
            swapped[k] = sd[a + k[len(b):]]
        else:
            swapped[k] = v
    naive.load_state_dict(swapped)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(view(x, Edits(branch_from={4: 5, 5: 4})), naive(x), atol=1e-6, rtol=0)
        assert not torch.allclose(view(x), naive(x), atol=1e-3)


def test_branch_scale_zero_equals_delete():
    m = _model("cifar_resnet20")
    view = anatomy(m, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(view(x, Edits(scale={2: 0.0})), view(x, Edits(delete=frozenset({2}))))


# --- hygiene ---------------------------------------------------------------------------------------

def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hooks_removed_and_state_restored_on_exception():
    m = _model("cifar_resnet20")
    m.train()
    m.layer2.eval()  # a mixed mode must come back exactly
    modes = [mod.training for mod in m.modules()]
    before = _snapshot(m)
    view = anatomy(m, (3, 32, 32))

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with preserved_state(m):
            m.eval()
            with torch.no_grad():
                view(torch.randn(2, 3, 32, 32), Edits(delete=frozenset({2})))
            assert hook_count(m) == 0
            raise Boom("mid-probe")
    assert hook_count(m) == 0
    assert [mod.training for mod in m.modules()] == modes
    assert _same(before, m.state_dict())


def test_view_use_leaves_model_untouched():
    m = _model("cifar_resnet56")
    m.train()
    before = _snapshot(m)
    view = anatomy(m, (3, 32, 32))
    view.check_decomposition(torch.randn(2, 3, 32, 32))
    assert m.training and all(mod.training for mod in m.modules())
    assert _same(before, m.state_dict()) and hook_count(m) == 0


def test_frozen_eval_restores_on_exception():
    from resprobe.anatomy import frozen_eval
    m = _model("cifar_resnet20")
    m.train()
    m.layer1[0].conv1.weight.requires_grad_(False)  # a mixed state must come back exactly
    flags = [p.requires_grad for p in m.parameters()]
    with pytest.raises(ValueError):
        with frozen_eval(m):
            assert not m.training and not any(p.requires_grad for p in m.parameters())
            raise ValueError("inside")
    assert m.training and [p.requires_grad for p in m.parameters()] == flags


# --- the test oracle tests/hooktrace.py (hooks on named submodules) ----------------------------------------

def test_trace_clones_through_inplace_add():
    """torchvision's BasicBlock does ``out = bn2(...); out += identity``: a captured bn2 output must be a clone."""
    m = _model("torchvision:resnet18")
    view = anatomy(m, (3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with Trace(m, ["layer1.0", "layer1.0.bn2"], input=True, output=True) as tr:
            m(x)
        f = view["layer1.0"].branch(tr["layer1.0"].input)
    assert torch.allclose(tr["layer1.0.bn2"].output, f, atol=1e-6)
    assert hook_count(m) == 0


def test_trace_grad_uses_tensor_hooks():
    m = _model("cifar_resnet20")
    x = torch.randn(2, 3, 32, 32)
    with Trace(m, ["layer2.0"], output=True, grad=True, detach=False, clone=False) as tr:
        loss = m(x).sum()
        out = tr["layer2.0"].output
        (g_ref,) = torch.autograd.grad(loss, out, retain_graph=True)
        loss.backward()
    assert torch.allclose(tr["layer2.0"].grad, g_ref)
    assert all(len(mod._backward_hooks) == 0 for mod in m.modules())
    assert hook_count(m) == 0


def test_trace_stop_early_and_bad_name():
    m = _model("cifar_resnet20")
    with pytest.raises(KeyError):
        Trace(m, ["nope"])
    calls = []
    h = m.linear.register_forward_hook(lambda *a: calls.append(1))  # a hook the toolkit did not add
    with torch.no_grad(), Trace(m, ["layer1.1"], stop=True) as tr:
        m(torch.randn(1, 3, 32, 32))
    assert tr["layer1.1"].output.shape == (1, 16, 32, 32) and not calls  # stopped before the head
    assert hook_count(m) == 1  # ours removed, the user's kept
    h.remove()
