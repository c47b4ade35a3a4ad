"""swap/unswap: recognition (by structure, confirmed by a probe), refusals with reasons, exact parity
(float64, train and eval, output and every parameter gradient), state_dict/checkpoints, unswap,
torch.compile, autocast, channels_last, and real timm / torchvision / package models."""
import contextlib
import copy

import pytest
import torch
import torch.nn as nn

import attn_kernels as ak
from attn_kernels import _backend
from attn_kernels import reference as R
from attn_kernels.models import SEResNet
from attn_kernels.swap import SwappedECA, SwappedSE, parity, randomize_norms, swap_check
from tests.helpers import assert_close

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.layers import CecaModule, EcaModule, EffectiveSEModule, GlobalContext, SEModule  # noqa: E402
from timm.layers.cbam import CbamModule, LightCbamModule  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite  # noqa: E402
from timm.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: E402
from torchvision.ops import SqueezeExcitation  # noqa: E402


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
class TutorialSE(nn.Module):
    """The seed/tutorial form, under a name no class table knows."""

    def __init__(self, channel, reduction=4, bias=True):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=bias), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=bias), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class ChannelAttention(TutorialSE):
    pass


class NotSE(TutorialSE):
    """Same children, different forward: must be left alone."""

    def forward(self, x):
        b, c, _, _ = x.size()
        return x + self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class PaperECA(nn.Module):
    """The ECA-Net paper's code."""

    def __init__(self, k_size=3):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.sigmoid(y).expand_as(x)


class LinearBnSE(nn.Module):
    """SE on Linear FCs with a BatchNorm1d after the first (the ReXNet / timm ``norm_layer`` form, 1-D)."""

    def __init__(self, c=16, r=4, affine=True):
        super().__init__()
        self.fc1, self.bn, self.act = nn.Linear(c, r), nn.BatchNorm1d(r, affine=affine), nn.SiLU()
        self.fc2, self.gate = nn.Linear(r, c), nn.Sigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3)))))))
        return x * s[:, :, None, None]


class SuperForwardBnSE(LinearBnSE):
    """Its forward calls super(): not runnable on a SwappedSE instance (the unfused training-mode path)."""

    def forward(self, x):
        return super().forward(x)


class BnAfterActSE(LinearBnSE):
    """The same children, the norm after the activation: not foldable into the first FC."""

    def forward(self, x):
        s = self.gate(self.fc2(self.bn(self.act(self.fc1(x.mean((2, 3)))))))
        return x * s[:, :, None, None]


def swapped_pair(model, **kwargs):
    """(original, swapped deep copy, report), norms randomised so no branch is trivially zero."""
    randomize_norms(model)
    swapped = copy.deepcopy(model)
    report = ak.swap(swapped, **kwargs)
    return model, swapped, report


def check_exact(original, swapped, x, modes=(False, True), x_train=None):
    """Float64: outputs and every parameter gradient agree to roundoff, train and eval
    (``x_train``: a different input for train mode)."""
    original, swapped = original.double(), swapped.double()
    for train in modes:
        x = (x_train if train and x_train is not None else x).double()
        outs, grads = [], []
        for m in (original, swapped):
            m.train(train)
            m.zero_grad(set_to_none=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                out = m(x.clone())
                out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
            outs.append(out)
            grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
        mode = "train" if train else "eval"
        assert_close(outs[1], outs[0], atol=1e-9 * max(1.0, outs[0].abs().max().item()), rtol=1e-7,
                     name=f"{mode} output")
        assert set(grads[0]) == set(grads[1])
        for n, g in grads[0].items():
            assert_close(grads[1][n], g, atol=1e-9 * max(1.0, g.abs().max().item()), rtol=1e-7,
                         name=f"{mode} grad {n}")


def assert_same_state(original, swapped):
    assert list(swapped.state_dict()) == list(original.state_dict())
    swapped.load_state_dict(original.state_dict(), strict=True)
    original.load_state_dict(swapped.state_dict(), strict=True)


def reasons(report):
    return {e.name: e.reason for e in report.left_alone}


# ----------------------------------------------------------------------------------------------
# recognition and refusals
# ----------------------------------------------------------------------------------------------
def test_synthetic_forms_are_swapped_exactly():
    model = nn.Sequential(
        TutorialSE(16), ChannelAttention(16, bias=False), PaperECA(3),
        SEModule(16, rd_ratio=0.25, rd_divisor=4), SEModule(16, act_layer="gelu", gate_layer="hard_sigmoid"),
        SEModule(16, act_layer=nn.SiLU, bias=False),
        SqueezeExcite(16, act_layer=nn.SiLU), SqueezeExcite(16, gate_layer="hard_sigmoid"),
        EffectiveSEModule(16), EcaModule(16), EcaModule(kernel_size=5), CecaModule(16), CecaModule(kernel_size=5),
        SqueezeExcitation(16, 4), SqueezeExcitation(16, 4, scale_activation=nn.Hardsigmoid),
        SqueezeExcitation(16, 4, activation=nn.SiLU),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Sequential(R.SEBlock(16, 4), R.EffectiveSE(16), R.ECA(16), R.ECA(16, k_size=5, circular=True),
                      R.AdaptiveSE(16), R.CBAM(16, 4, 3), R.DynamicMultiKernelECA(16), R.BidirectionalECA(16)),
    )
    params_before = {id(p) for p in model.parameters()}
    original, swapped, report = swapped_pair(model, backend="reference")
    assert report.left_alone == [], str(report)
    assert report.kinds() == {"se": 11, "effective_se": 2, "eca": 4, "ceca": 3, "adaptive_se": 1, "cbam": 1,
                              "dmk_eca": 1, "bi_eca": 1}, str(report)
    for i in range(16):
        assert isinstance(swapped[i], (SwappedSE, SwappedECA)), (i, type(swapped[i]))
    assert [type(m) for m in swapped[17]] == [ak.FusedSE, ak.FusedEffectiveSE, ak.FusedECA, ak.FusedECA,
                                              ak.FusedAdaptiveSE, ak.FusedCBAM, ak.FusedDynamicMultiKernelECA,
                                              ak.FusedBidirectionalECA]
    assert swapped[11].fused_circular and not swapped[9].fused_circular
    assert_same_state(original, swapped)
    check_exact(original, swapped, torch.randn(2, 16, 5, 4))
    # in place, the same Parameter objects
    assert {id(p) for p in model.parameters()} == params_before


def test_hardswish_bottlenecks_are_swapped():
    """nn.Hardswish and timm's own HardSwish / HardSwishMe (FBNetV3's SE) as the bottleneck activation. The
    first FC's bias spreads the hidden pre-activations over [-6, 6], so all three pieces of hardswish (and
    its two kinks' sides) are in play, not only the middle one that default-initialised weights reach."""
    from timm.layers.activations import HardSwish
    from timm.layers.activations_me import HardSwishMe

    model = nn.Sequential(SEModule(16, act_layer="hard_swish"), SqueezeExcite(16, act_layer=HardSwish),
                          SqueezeExcite(16, act_layer=HardSwishMe, gate_layer="hard_sigmoid"),
                          SqueezeExcitation(16, 4, activation=nn.Hardswish))
    with torch.no_grad():
        for block in model:
            first_fc = next(m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            first_fc.bias.copy_(torch.linspace(-6.0, 6.0, first_fc.bias.numel()))
    original, swapped, report = swapped_pair(model, backend="reference")
    assert report.left_alone == [] and report.kinds() == {"se": 4}, str(report)
    assert [m.fused_act for m in swapped] == ["hardswish"] * 4
    check_exact(original, swapped, torch.randn(2, 16, 5, 4))


def test_batchnorm_between_the_fcs_is_folded_in_eval_and_unfused_in_training(monkeypatch):
    """timm SEModule(norm_layer=BatchNorm2d) (ReXNet), a Linear + BatchNorm1d form, and one without affine
    parameters: eval mode runs the fused op with the norm folded into the first FC, training mode (batch
    statistics couple the samples) the original forward; both exact, running statistics updated alike."""
    model = nn.Sequential(SEModule(16, norm_layer=nn.BatchNorm2d), LinearBnSE(), LinearBnSE(affine=False),
                          SEModule(16, norm_layer=nn.BatchNorm2d, act_layer="hard_swish", bias=False))
    original, swapped, report = swapped_pair(model, backend="reference")
    assert report.left_alone == [] and report.kinds() == {"se": 4}, str(report)
    assert all("folded while in eval mode" in e.detail for e in report.replaced), str(report)
    assert_same_state(original, swapped)
    calls = []
    se = ak.functional.se
    monkeypatch.setattr(ak.functional, "se", lambda *a, **k: calls.append(1) or se(*a, **k))
    check_exact(original, swapped, torch.randn(3, 16, 5, 4), modes=(False,))
    assert len(calls) == 4  # eval: all four through the fused op
    calls.clear()
    check_exact(original, swapped, torch.randn(3, 16, 5, 4), modes=(True,))
    assert calls == []  # training: the originals' forwards
    for a, b in zip(original.modules(), swapped.modules()):
        if isinstance(a, nn.BatchNorm1d | nn.BatchNorm2d):
            assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
            assert a.num_batches_tracked == b.num_batches_tracked == 1
    # a frozen norm inside a model in training mode (fine-tuning): running statistics, so fused
    for m in (original, swapped):
        m.train()
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
                bn.eval()
    out = swapped(torch.randn(3, 16, 5, 4, dtype=torch.float64))
    assert len(calls) == 4 and out.requires_grad
    # and the fused forward's gradient reaches the norm's weight and bias through the fold
    original.zero_grad(set_to_none=True)
    swapped.zero_grad(set_to_none=True)
    x = torch.randn(3, 16, 5, 4, dtype=torch.float64)
    g = torch.randn(3, 16, 5, 4, dtype=torch.float64)
    original(x).backward(g)
    swapped(x).backward(g)
    for (name, a), b in zip(original.named_parameters(), swapped.parameters()):
        assert a.grad is not None and b.grad is not None, name
        assert_close(b.grad, a.grad, atol=1e-12, rtol=1e-9, name=name)


def test_norm_without_running_statistics_is_left_alone():
    model = LinearBnSE()
    model.bn = nn.BatchNorm1d(4, track_running_stats=False)
    report = ak.swap(nn.Sequential(model), backend="reference")
    assert report.replaced == [], str(report)
    (entry,) = report.left_alone
    assert "keeps no running statistics" in entry.reason, str(report)


def test_se_with_a_folded_norm_gets_no_fused_residual_tail():
    from functools import partial

    model = tiny_timm_resnet(BasicBlock, partial(SEModule, norm_layer=nn.BatchNorm2d))
    original, swapped, report = swapped_pair(model, backend="reference", fuse_residual=True)
    assert report.kinds() == {"se": 4}, str(report)
    assert sum("folds a BatchNorm only in eval mode" in e.reason for e in report.left_alone) == 4, str(report)
    check_exact(original, swapped, torch.randn(2, 3, 32, 32))


def test_swap_keeps_the_parameter_objects_and_unswap_restores_modules():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), SEModule(16), nn.Sequential(TutorialSE(16), R.ECA(16)))
    modules_before = list(model.modules())
    params_before = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = ak.swap(model)
    assert len(report.replaced) == 3 and report.replaced[0].backend == "current"
    assert [id(p) for p in model.parameters()] == params_before
    assert {id(p) for g in opt.param_groups for p in g["params"]} == set(params_before)
    assert ak.swap(model).replaced == []  # idempotent: already swapped blocks are skipped
    model.eval()
    assert ak.unswap(model) == 3
    assert list(model.modules()) == modules_before
    assert not model[1].training  # the mode set while swapped is carried back
    assert ak.unswap(model) == 0


@pytest.mark.parametrize("block,why", [
    (SEModule(16, norm_layer=nn.InstanceNorm2d), "folds only one BatchNorm"),
    (BnAfterActSE(), "probe mismatch"),
    (SuperForwardBnSE(), "probe mismatch in training mode (TypeError"),
    (SEModule(16, add_maxpool=True), "add_maxpool"),
    (SEModule(16, act_layer=nn.ReLU6), "ReLU6"),
    (SEModule(16, act_layer="hard_sigmoid"), "activation Hardsigmoid"),
    (SEModule(16, act_layer="prelu"), "PReLU"),
    (SEModule(16, act_layer="gelu_tanh"), "GELUTanh"),
    (SEModule(16, gate_layer="tanh"), "gate Tanh"),
    (EffectiveSEModule(16, add_maxpool=True), "add_maxpool"),
    (EcaModule(16, use_mlp=True), "use_mlp"),
    (EcaModule(16, gate_layer="hard_sigmoid"), "fused eca uses a sigmoid"),
    (CecaModule(16, act_layer=nn.ReLU), "bias"),
    (CbamModule(16), "BatchNorm"),
    (LightCbamModule(16), "light CBAM"),
    (SqueezeExcitation(16, 4, activation=nn.Mish), "Mish"),
    (NotSE(16), "probe mismatch"),
    (GlobalContext(16, fuse_add=False, fuse_scale=True), "global-context block"),
])
def test_unsupported_forms_are_left_alone_with_the_reason(block, why):
    model = nn.Sequential(block)
    report = ak.swap(model, backend="reference")
    assert report.replaced == [] and model[0] is block
    assert why in reasons(report)["0"], str(report)


def test_a_gated_mlp_is_not_taken_for_an_se():
    """gMLP's GatedMlp has fc1 / act / fc2 and a child named gate, but the gate has weights (a token
    projection): not an SE, so nothing to report (timm's gmlp models listed 90 such 'left alone' lines)."""
    from functools import partial

    from timm.layers.mlp import GatedMlp
    from timm.models.mlp_mixer import SpatialGatingUnit

    report = ak.swap(nn.Sequential(GatedMlp(16, 32, gate_layer=partial(SpatialGatingUnit, seq_len=10))),
                     backend="reference")
    assert report.replaced == [] and report.left_alone == [], str(report)


def test_grouped_or_spatial_convs_are_not_reproduced():
    se = SEModule(16)
    se.fc1 = nn.Conv2d(16, 8, 1, groups=2)
    se3 = SEModule(16)
    se3.fc2 = nn.Conv2d(8, 16, 3, padding=1)
    report = ak.swap(nn.Sequential(se, se3), backend="reference")
    assert report.replaced == []
    assert "grouped conv" in reasons(report)["0"] and "not 1x1" in reasons(report)["1"]


class GatedBlock(nn.Module):
    """Looks a bit like SE (a conv and a sigmoid child) but is a larger block holding a real SE."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.gate = nn.Sigmoid()
        self.se = SEModule(16)

    def forward(self, x):
        return self.se(self.conv(x)) * self.gate(x)


def test_blocks_refused_by_structure_are_still_searched_inside():
    model = nn.Sequential(GatedBlock())
    report = ak.swap(model, backend="reference")
    assert [e.name for e in report.replaced] == ["0.se"], str(report)
    assert "not 1x1" in reasons(report)["0"]


def test_include_filters_by_kind_or_predicate():
    model = nn.Sequential(SEModule(16), EcaModule(16), R.SEBlock(16))
    report = ak.swap(model, include={"eca"})
    assert [e.kind for e in report.replaced] == ["eca"]
    assert "excluded by include" in reasons(report)["0"]
    ak.unswap(model)
    report = ak.swap(model, include=lambda name, m: name == "2")
    assert [e.name for e in report.replaced] == ["2"]
    with pytest.raises(ValueError, match="unknown kind"):
        ak.swap(model, include={"nope"})
    with pytest.raises(ValueError, match="unknown backend"):
        ak.swap(model, backend="nope")
    with pytest.raises(TypeError):
        ak.swap("not a module")


def test_named_backend_that_cannot_run_leaves_blocks_alone():
    """A CPU model pinned to the cuda backend: nothing is swapped, and the report says why."""
    model = nn.Sequential(SEModule(16), R.ECA(16))
    report = ak.swap(model, backend="cuda")
    assert report.replaced == [] and len(report.left_alone) == 2
    assert all("cannot run it" in e.reason for e in report.left_alone)


def test_report_text():
    model = nn.Sequential(SEModule(16), SEModule(16, add_maxpool=True))
    text = str(ak.swap(model, backend="reference"))
    assert "replaced 1 block(s), left 1 alone" in text
    assert "+ 0: timm.layers.squeeze_excite.SEModule -> se [reference]" in text
    assert "- 1: " in text and "add_maxpool" in text


# ----------------------------------------------------------------------------------------------
# residual fusion
# ----------------------------------------------------------------------------------------------
def tiny_timm_resnet(block, attn, **kwargs):
    return ResNet(block, (1, 1, 1, 1), channels=(16, 16, 32, 32), stem_width=8, num_classes=5,
                  block_args=dict(attn_layer=attn), **kwargs)


@pytest.mark.parametrize("block,attn,kinds", [
    (BasicBlock, "se", {"se": 4, "se_residual": 4}),
    (Bottleneck, "eca", {"eca": 4, "eca_residual": 4}),
    (Bottleneck, "ceca", {"ceca": 4, "eca_residual": 4}),
])
def test_timm_residual_blocks_fuse_exactly(block, attn, kinds):
    original, swapped, report = swapped_pair(tiny_timm_resnet(block, attn), backend="reference", fuse_residual=True)
    assert report.kinds() == kinds, str(report)
    assert_same_state(original, swapped)
    check_exact(original, swapped, torch.randn(2, 3, 32, 32))
    ak.unswap(swapped)
    assert [type(m) for m in swapped.modules()] == [type(m) for m in original.modules()]


def test_residual_with_drop_path_or_cbam_is_left_alone():
    model = tiny_timm_resnet(BasicBlock, "se", drop_path_rate=0.1)
    report = ak.swap(model, backend="reference", fuse_residual=True)
    # the first block's drop-path rate is 0 (timm builds no DropPath there): only it fuses
    assert report.kinds() == {"se": 4, "se_residual": 1}, str(report)
    assert all("drop_path" in e.reason for e in report.left_alone) and len(report.left_alone) == 3
    assert all(e.tail for e in report.left_alone)  # residual tails, told apart from attention blocks left alone
    report = ak.swap(tiny_timm_resnet(BasicBlock, "cbam"), backend="reference", fuse_residual=True)
    assert report.replaced == [] and len(report.left_alone) == 8
    assert sum("BatchNorm" in e.reason and not e.tail for e in report.left_alone) == 4
    assert sum("(CbamModule) was not swapped" in e.reason and e.tail for e in report.left_alone) == 4


def test_residual_with_hardswish_output_is_refused_by_name():
    """Hardswish is an SE hidden activation, not a residual tail one: the tail says so (before, it was
    built with out_act="hardswish" and reported as a probe mismatch)."""
    model = tiny_timm_resnet(BasicBlock, "se", act_layer=nn.Hardswish)
    report = ak.swap(model, backend="reference", fuse_residual=True)
    assert report.kinds() == {"se": 4}, str(report)
    assert len(report.left_alone) == 4
    assert all("output activation Hardswish not supported" in e.reason for e in report.left_alone), str(report)


@pytest.mark.slow
def test_package_se_resnet50_and_cnn_se():
    original, swapped, report = swapped_pair(R.se_resnet50(num_classes=10), backend="reference",
                                             fuse_residual=True)
    assert report.kinds() == {"se": 16, "se_residual": 16}
    assert_same_state(original, swapped)
    check_exact(original, swapped, torch.randn(1, 3, 64, 64), modes=(True,))
    original, swapped, report = swapped_pair(R.CNN_SE(), backend="reference", fuse_residual=True)
    assert report.kinds() == {"se": 3}
    check_exact(original, swapped, torch.randn(2, 3, 32, 32))


def test_eca_resnet_residual_from_the_package():
    original, swapped, report = swapped_pair(
        SEResNet((1, 1, 1, 1), attn="eca", num_classes=10), backend="reference", fuse_residual=True)
    assert report.kinds() == {"eca": 4, "eca_residual": 4}
    check_exact(original, swapped, torch.randn(2, 3, 32, 32), modes=(True,))


# ----------------------------------------------------------------------------------------------
# real models, random weights, nothing downloaded
# ----------------------------------------------------------------------------------------------
REAL = [
    ("timm", "seresnet18", {"se": 8, "se_residual": 8}),
    ("timm", "legacy_seresnet18", {"se": 8}),
    ("timm", "efficientnet_b0", {"se": 16}),
    ("timm", "mobilenetv3_small_050", {"se": 9}),
    ("timm", "ese_vovnet19b_dw", {"effective_se": 4}),
    ("torchvision", "efficientnet_b0", {"se": 16}),
    ("torchvision", "mobilenet_v3_small", {"se": 9}),
    ("torchvision", "regnet_y_400mf", {"se": 16}),
]


@pytest.mark.parametrize("lib,name,kinds", REAL, ids=[f"{lib}-{name}" for lib, name, _ in REAL])
def test_real_models(lib, name, kinds):
    torch.manual_seed(0)
    if lib == "timm":
        model = timm.create_model(name, pretrained=False, num_classes=10)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    original, swapped, report = swapped_pair(model, backend="reference", fuse_residual=True)
    assert report.kinds() == kinds, str(report)
    assert report.left_alone == [], str(report)
    assert_same_state(original, swapped)
    # train mode at 64x64: the last stage keeps 2x2 positions, so train-mode BatchNorm does not normalise
    # over just N=2 values (ill-conditioned enough to amplify 1e-16 differences to 1e-6)
    check_exact(original, swapped, torch.randn(2, 3, 32, 32), x_train=torch.randn(2, 3, 64, 64))


@contextlib.contextmanager
def tf32_on():
    """TF32 for fp32 matmuls and cuDNN convolutions, as a user enables it (cuDNN convolutions default to it)."""
    mm, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (mm.fp32_precision, conv.fp32_precision)
    mm.fp32_precision, conv.fp32_precision = "tf32", "tf32"
    try:
        yield
    finally:
        mm.fp32_precision, conv.fp32_precision = saved


def test_probe_runs_without_tf32_and_restores_the_callers_setting():
    """The probe compares in true fp32 whatever the caller set (a TF32 original is ~1e-3 off the fused fp32
    op: the H200 profile of 2026-12-04 swapped 1 of SE-ResNet-50's 16 SE blocks), then restores it."""
    seen = []
    block = SEModule(64)
    block.fc1.register_forward_pre_hook(
        lambda m, a: seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)))
    model = nn.Sequential(block)
    with tf32_on():
        report = ak.swap(model, backend="reference")
        after = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    assert report.kinds() == {"se": 1}, str(report)
    assert seen and all(s == ("ieee", "ieee") for s in seen), seen
    assert after == ("tf32", "tf32")


@pytest.mark.gpu
@pytest.mark.parametrize("name,kinds", [("seresnet50", {"se": 16}), ("efficientnet_b0", {"se": 16}),
                                        ("resnet50-eca", {"eca": 16})])
def test_real_models_swap_every_block_on_the_gpu_with_tf32_on(name, kinds):
    """On the GPU with TF32 on (cuDNN's default), every attention block of the profiled models is swapped,
    on the backend ``auto`` picks there."""
    torch.manual_seed(0)
    if name == "resnet50-eca":
        model = timm.create_model("resnet50", num_classes=10, block_args={"attn_layer": "eca"})
    else:
        model = timm.create_model(name, num_classes=10)
    model = model.cuda().to(memory_format=torch.channels_last)
    with tf32_on():
        report = ak.swap(model)
    assert report.kinds() == kinds and report.left_alone == [], str(report)


def test_fp32_parity_within_dtype_tolerance():
    """In float32 the swapped model differs from the original by roundoff only (eval: tight)."""
    original, swapped, _ = swapped_pair(timm.create_model("mobilenetv3_large_100", num_classes=10),
                                        backend="reference")
    x = torch.randn(2, 3, 32, 32)
    out_err, out_max, grad_err, grad_max = parity(original, swapped, x, train=False)
    assert out_err <= 1e-5 * max(1.0, out_max) and grad_err <= 1e-5 * max(1.0, grad_max), (out_err, grad_err)


# ----------------------------------------------------------------------------------------------
# compile, autocast, channels_last, triton
# ----------------------------------------------------------------------------------------------
def test_swapped_model_compiles_fullgraph():
    original, swapped, _ = swapped_pair(tiny_timm_resnet(BasicBlock, "se"), backend="reference", fuse_residual=True)
    original.eval()
    swapped.eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(swapped, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x), original(x), name="compiled swapped model")
    torch._dynamo.reset()


def test_autocast_bf16_and_channels_last():
    original, swapped, _ = swapped_pair(tiny_timm_resnet(BasicBlock, "se"), backend="reference", fuse_residual=True)
    original.eval()
    swapped.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = original(x), swapped(x)
    assert a.dtype == b.dtype == torch.bfloat16
    assert_close(b.float(), a.float(), atol=3e-2 * a.abs().max().item(), rtol=3e-2, name="autocast bf16")
    original.to(memory_format=torch.channels_last)
    swapped.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    out = swapped(xc)
    out.sum().backward()
    assert_close(out, original(x), atol=1e-5 * max(1.0, out.abs().max().item()), name="channels_last")
    assert torch.isfinite(xc.grad).all()


@pytest.mark.triton
def test_swapped_tiny_model_runs_on_triton():
    """SE, ECA and the fused SE-residual tail of a swapped tiny model, on the triton backend (the
    interpreter on CPU): output and every parameter gradient match the unswapped model."""
    from tests.conftest import HAS_CUDA, INTERPRET

    if not (INTERPRET or HAS_CUDA):
        pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if HAS_CUDA else "cpu"
    missing = []
    for op in ("se", "eca", "se_residual"):
        try:
            _backend.resolve(op, device, "triton")
        except _backend.BackendUnavailableError as exc:
            missing.append(f"{op}: {exc}")
    if missing:
        pytest.skip(f"triton implementation not available yet: {'; '.join(missing)}")
    model = ResNet(BasicBlock, (1, 1, 1, 1), channels=(8, 8, 8, 8), stem_width=8, num_classes=3,
                   block_args=dict(attn_layer="se"))
    model.layer3, model.layer4 = nn.Identity(), EcaModule(8)  # keep it tiny: 2 blocks + an ECA
    original, swapped, report = swapped_pair(model.to(device), backend="triton", fuse_residual=True)
    assert report.kinds() == {"se": 2, "eca": 1, "se_residual": 2}, str(report)
    x = torch.randn(2, 3, 16, 16, device=device)
    for train in (False, True):
        out_err, out_max, grad_err, grad_max = parity(original, swapped, x, train=train)
        assert out_err <= 1e-5 * max(1.0, out_max) and grad_err <= 1e-4 * max(1.0, grad_max), (train, out_err, grad_err)


@pytest.mark.triton
def test_swapped_conv_se_hands_the_op_its_conv_weights():
    """timm's SE modules hold 1×1 convs: the swapped module passes their weights unflattened (no view node
    per call), and on the triton backend in a channels_last model every weight's gradient comes back in the
    weight's own strides (as eager autograd gives them) and matches the original module's."""
    from tests.conftest import HAS_CUDA, INTERPRET

    if not (INTERPRET or HAS_CUDA):
        pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if HAS_CUDA else "cpu"
    torch.manual_seed(0)
    original = nn.Sequential(SEModule(16, rd_ratio=0.25)).to(device).to(memory_format=torch.channels_last)
    swapped = copy.deepcopy(original)
    ak.swap(swapped, backend="triton")
    se = swapped[0]
    assert isinstance(se, SwappedSE)
    w1, b1, w2, b2 = se.se_params()
    assert w1 is se.fc1.weight and w2 is se.fc2.weight and w1.dim() == 4
    x = torch.randn(2, 16, 5, 5, device=device).to(memory_format=torch.channels_last)
    gy = torch.randn_like(x)
    for m in (original, swapped):
        m(x).backward(gy)
    for (name, p), q in zip(swapped.named_parameters(), original.parameters()):
        assert p.grad.stride() == p.stride(), name
        assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, name=name)


def test_swap_check_text():
    text = swap_check("timm:mobilenetv3_small_050", input_size=(2, 3, 32, 32), backend="reference", float64=False)
    assert "state_dict keys unchanged: True" in text and "-> se [reference]" in text
    assert "eval : max abs err output" in text and "train: max abs err output" in text
    with pytest.raises(ValueError, match="unknown model"):
        swap_check("no_such_model_xyz")


def test_swap_check_default_probe_fits_the_model():
    """CNN_SE's Linear is sized for 32x32 (the old fixed 128x128 probe failed there); fixed-size timm models
    get their pretrained_cfg input size; models that pool globally keep 2x3x128x128."""
    from attn_kernels.swap import DEFAULT_INPUT_SIZE, _build_model

    assert _build_model("CNN_SE")[1] == _build_model("attn_kernels:CNN_SE")[1] == (2, 3, 32, 32)
    assert _build_model("timm:vit_tiny_patch16_224")[1] == (2, 3, 224, 224)
    assert _build_model("timm:mobilenetv3_small_050")[1] == DEFAULT_INPUT_SIZE
    with pytest.raises(ValueError, match="unknown model"):
        _build_model("timm:CNN_SE")  # a library prefix names where to look
    text = swap_check("CNN_SE", backend="reference", float64=False)
    assert "swap-check CNN_SE (input (2, 3, 32, 32)" in text and "replaced 3 block(s)" in text
