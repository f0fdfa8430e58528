"""Tests of the model registry (study.models): every architecture trains, splits and reports its pyramid truthfully.

Parameter counts are checked against the papers: ResNet-20 0.27M and ResNet-110 1.7M (He et al. 2016, Table 6),
PyramidNet-110 (alpha-tilde 64) 1.7M and PyramidNet-200 (alpha-tilde 240) 26.8M on CIFAR-100 (Yun et al. 2019's
CIFAR tables; Han et al. 2017 PyramidNet).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from study.config.schema import ModelConfig
from study.models import MODEL_NAMES, Classifier, build_model, count_parameters

torch.set_num_threads(1)

# Small variants where the config allows it, so the whole registry runs in seconds on one CPU thread.
SMALL = {"cnn": {"width": 8}, "pyramidnet": {"depth": 11, "widen": 12.0}}


def small(arch: str, num_classes: int = 5, in_channels: int = 3) -> Classifier:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, **SMALL.get(arch, {})), num_classes, in_channels)


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_one_sgd_step_trains(arch: str) -> None:
    model = small(arch)
    model.train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3])
    logits = model(x)
    assert logits.shape == (2, 5) and logits.dtype == torch.float32
    loss = F.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    # The stem, the deepest stage and the classifier all move: gradients reach both ends.
    first_conv = next(k for k in before if k.startswith("backbone.") and k.endswith("weight") and before[k].ndim == 4)
    assert first_conv in changed and "head.fc.weight" in changed
    assert len(changed) > 0.9 * len(before)


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_split_stage_metadata_and_channels_last(arch: str) -> None:
    model = small(arch).eval()
    bb = model.backbone
    assert model.arch == arch and model.num_classes == 5 and model.in_channels == 3
    assert bb.family in ("torchvision-resnet", "cifar-resnet", "pyramidnet", "cnn")
    children = dict(bb.named_children())
    assert all(n in children for n in bb.stage_names)
    assert len(bb.stage_names) == len(bb.stage_channels) == len(bb.stage_strides) >= 3

    shapes: dict[str, torch.Size] = {}
    hooks = [children[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape))
             for n in bb.stage_names]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = bb(x)
        logits = model(x)
    for h in hooks:
        h.remove()
    # The stated channels and strides are what the network really produces.
    assert [s[1] for s in (shapes[n] for n in bb.stage_names)] == bb.stage_channels
    assert [64 // shapes[n][2] for n in bb.stage_names] == bb.stage_strides
    assert feats.shape == shapes[bb.stage_names[-1]]
    torch.testing.assert_close(model.head(feats), logits)
    assert model.head(feats).shape == (2, 5)

    # channels_last model and input give the same logits.
    model_cl = small(arch).eval().to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    with torch.no_grad():
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, logits, atol=1e-4, rtol=1e-4)


def test_unknown_arch_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        build_model(ModelConfig(arch="resnet21"), 10)
    msg = str(err.value)
    assert "model.arch='resnet21'" in msg and all(name in msg for name in MODEL_NAMES)


def test_pyramidnet_depth_rules() -> None:
    with pytest.raises(ValueError, match=r"\(depth - 2\) % 9 == 0.*nearest: 92, 101"):
        build_model(ModelConfig(arch="pyramidnet", depth=100), 10)
    with pytest.raises(ValueError, match="nearest: 11"):
        build_model(ModelConfig(arch="pyramidnet", depth=8), 10)
    with pytest.raises(ValueError, match="contradicts"):
        build_model(ModelConfig(arch="pyramidnet110", depth=164), 10)
    # depth 20 = 2 blocks per stage, 2 * 3 bottlenecks in total.
    m = build_model(ModelConfig(arch="pyramidnet", depth=20, widen=48), 10)
    assert [len(getattr(m.backbone, f"layer{i}")) for i in (1, 2, 3)] == [2, 2, 2]
    # Additive widening: the last block has 16 + alpha-tilde bottleneck channels, times 4 at the output.
    assert m.backbone.stage_channels[-1] == (16 + 48) * 4


def _within(n: int, target: float, tol: float = 0.02) -> bool:
    return abs(n - target) <= tol * target


def test_parameter_counts_match_the_papers() -> None:
    assert _within(count_parameters(build_model(ModelConfig(arch="resnet20"), 10)), 0.27e6)
    assert _within(count_parameters(build_model(ModelConfig(arch="resnet8"), 10)), 0.078e6, tol=0.05)  # n = 1
    assert _within(count_parameters(build_model(ModelConfig(arch="resnet110"), 10)), 1.7e6)
    assert _within(count_parameters(build_model(ModelConfig(arch="pyramidnet110"), 100)), 1.7e6)
    assert _within(count_parameters(build_model(ModelConfig(arch="pyramidnet200"), 100)), 26.8e6)
    # The widening factor reaches the model: a wider override has more parameters.
    assert count_parameters(build_model(ModelConfig(arch="pyramidnet110", widen=84), 100)) > 2.0e6
    # torchvision's ResNet-50 with 1000 classes is 25.56M parameters.
    assert count_parameters(build_model(ModelConfig(arch="resnet50"), 1000)) == 25_557_032


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_keys_load_into_resnet_fpn_body(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch), 10)
    state = model.backbone.state_dict()
    reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert list(state) == [k for k in reference if not k.startswith("fc.")]
    body = resnet_fpn_backbone(backbone_name=arch, weights=None, trainable_layers=5).body
    body.load_state_dict(state, strict=True)


def test_cifar_torchvision_variants_keep_key_names_with_a_small_stem() -> None:
    model = build_model(ModelConfig(arch="resnet18_cifar"), 10)
    ref = torchvision.models.resnet18(weights=None).state_dict()
    assert list(model.backbone.state_dict()) == [k for k in ref if not k.startswith("fc.")]
    assert model.backbone.conv1.weight.shape == (64, 3, 3, 3)
    assert model.backbone.family == "torchvision-resnet" and model.backbone.stage_strides == [1, 2, 4, 8]


@pytest.mark.parametrize("arch", ["cnn", "resnet20", "pyramidnet", "resnet18"])
def test_in_channels(arch: str) -> None:
    model = small(arch, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_default_model_cam_is_at_least_6x6_at_24px() -> None:
    """Issue 16: the embedded default's CAM must be able to localize; three 2x2 pools left it 3x3 at 24 px."""
    from study.config.load import load_config
    from study.models import cam_size

    cfg = load_config()
    model = build_model(cfg.model, 10, 3)
    h, w = cam_size(model, cfg.data.image_size)
    assert cfg.data.image_size == 24 and h >= 6 and w >= 6, (h, w)
    assert model.backbone.stage_strides[-1] == cfg.data.image_size // h


def test_cam_stride_sets_the_cnn_map_and_keeps_its_weights() -> None:
    from study.models import cam_size

    sizes, states = {}, {}
    for stride in (0, 8, 4, 2):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="cnn", width=8, cam_stride=stride), 10, 3)
        sizes[stride] = cam_size(model, 24)
        states[stride] = model.state_dict()
        assert model.backbone.stage_strides[-1] == (stride or 8)
        assert model(torch.zeros(2, 3, 24, 24)).shape == (2, 10)
    assert sizes == {0: (3, 3), 8: (3, 3), 4: (6, 6), 2: (12, 12)}
    for stride in (4, 2):  # a pool holds no weights: a checkpoint loads whatever the cam_stride
        assert {k: v.shape for k, v in states[stride].items()} == {k: v.shape for k, v in states[8].items()}
        assert all(torch.equal(states[stride][k], states[8][k]) for k in states[8])
    # the paper architectures ignore it, as they ignore `width`: a searched arch keeps its paper shape
    from study.models import cam_size as size

    assert size(build_model(ModelConfig(arch="resnet20", cam_stride=4), 10, 3), 32) == (8, 8)


def test_paper_models_keep_their_shapes_and_report_their_cam_size() -> None:
    from study.models import cam_size

    assert cam_size(small("resnet20"), 32) == (8, 8)
    assert cam_size(small("pyramidnet"), 32) == (8, 8)
    assert cam_size(small("resnet18_cifar"), 32) == (4, 4)
    assert cam_size(small("resnet18"), 224) == (7, 7)
    assert cam_size(small("resnet18"), (64, 96)) == (2, 3)
