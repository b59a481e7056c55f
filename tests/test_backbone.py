"""ResNeSt as a backbone: features_only maps (shapes, channels, strides, weights loaded strict on
the body), torchvision's Faster R-CNN on an FPN over it (a training step and an inference on
the CPU), and the DeepLabV3 head of docs/after_training.md."""

import pytest
import torch

from resnest_train.backbone import NamedFeatures, load_body_weights, resnest_backbone, resnest_faster_rcnn
from resnest_train.errors import UserError
from resnest_train.finetune import FrozenBatchNorm2d
from resnest_train.models import ModelError, create_model


def stage_outputs(model, x):
    """The classifier's own stem (act1) and layer1..layer4 outputs, taken with forward hooks."""
    seen = {}
    hooks = [
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n in ("act1", "layer1", "layer2", "layer3", "layer4")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name,stem", [("resnest14", 64), ("resnest101", 128)])
def test_features_are_the_classifiers_stage_maps_with_channels_and_strides(name, stem):
    torch.manual_seed(0)
    classifier = create_model(name, num_classes=7, zero_init_last=False).eval()
    body = create_model(name, features_only=True, out_indices=(0, 1, 2, 3, 4)).eval()
    body.load_classifier_state_dict(classifier.state_dict())  # strict: every body key, fc dropped
    assert body.channels == body.feature_info.channels() == [stem, 256, 512, 1024, 2048]
    assert body.reductions == body.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert body.feature_info.module_name() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = body(x)
    want = stage_outputs(classifier, x)
    for m, c, r, n in zip(maps, body.channels, body.reductions, ("act1", "layer1", "layer2", "layer3", "layer4")):
        assert m.shape == (2, c, 64 // r, 96 // r)
        assert torch.equal(m, want[n])
    assert set(body.state_dict()) == set(classifier.state_dict()) - {"fc.weight", "fc.bias"}


def test_out_indices_choose_maps_and_later_stages_are_not_built():
    classifier = create_model("resnest14", num_classes=3)
    body = create_model("resnest14", features_only=True, out_indices=(1, 2))
    assert not hasattr(body, "layer3") and not hasattr(body, "layer4")
    body.load_classifier_state_dict(classifier.state_dict())  # layer3/4 and fc keys left out
    assert [m.shape[1] for m in body.eval()(torch.randn(1, 3, 64, 64))] == [256, 512]
    assert body.feature_info.channels() == [256, 512] and body.reductions == [4, 8]
    with pytest.raises(
        RuntimeError, match="Unexpected key.*layer1.1.conv1.weight"
    ):  # strict: resnest26 has 2 blocks a stage
        body.load_classifier_state_dict(create_model("resnest26", num_classes=3).state_dict())
    for bad in [(), (2, 1), (1, 1), (5,), [0, 9]]:
        with pytest.raises(ModelError, match="out_indices must be increasing distinct stage indices in 0..4"):
            create_model("resnest14", features_only=True, out_indices=bad)


def test_body_weights_from_a_checkpoint_file_and_its_ema(tmp_path):
    torch.manual_seed(0)
    model, ema = create_model("resnest14", num_classes=4), create_model("resnest14", num_classes=4)
    path = str(tmp_path / "ckpt.pth")
    torch.save(
        {
            "model": {f"module.{k}": v for k, v in model.state_dict().items()},
            "ema": {f"module.{k}": v for k, v in ema.state_dict().items()},
        },
        path,
    )
    body = create_model("resnest14", features_only=True)
    load_body_weights(body, path, use_ema=True)
    assert torch.equal(body.layer2[0].conv1.weight, ema.layer2[0].conv1.weight)
    load_body_weights(body, path)
    assert torch.equal(body.layer2[0].conv1.weight, model.layer2[0].conv1.weight)
    with pytest.raises(UserError, match=r"do not fit this backbone \(\d+ missing keys: layer1.1"):
        load_body_weights(create_model("resnest26", features_only=True), path)


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    """Weights of a resnest14 classifier with every residual branch on (no zero-init gamma)."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("weights") / "resnest14.pth")
    torch.save(create_model("resnest14", num_classes=10, zero_init_last=False).state_dict(), path)
    return path


def tiny_detection_batch():
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 30.0, 100.0, 110.0], [5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([2, 1])},
    ]
    return images, targets


def test_faster_rcnn_on_resnest_fpn_trains_one_step_and_detects(pretrained_file):
    torch.manual_seed(0)
    # torchvision's setting for pretrained detection backbones: stem + layer1 frozen, every BatchNorm frozen
    model = resnest_faster_rcnn(
        "resnest14", num_classes=3, weights=pretrained_file, freeze_stages=2, freeze_bn=True, min_size=128, max_size=128
    )
    body = model.backbone.body
    assert model.backbone.out_channels == 256 and body.channels == [256, 512, 1024, 2048]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    stats_before = {k: v.clone() for k, v in body.state_dict().items() if "running" in k}
    layer3_before = body.layer3[0].conv1.weight.detach().clone()
    images, targets = tiny_detection_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    total.backward()
    assert body.conv1[0].weight.grad is None and body.layer1[0].conv1.weight.grad is None  # frozen
    for module in (body.layer2[0].conv1, body.layer3[0].conv3, body.layer4[0].conv2.conv):
        assert module.weight.grad.abs().sum() > 0  # the body learns from the detection losses
    assert model.backbone.fpn.inner_blocks[0][0].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(body.layer3[0].conv1.weight, layer3_before)
    assert all(torch.equal(v, body.state_dict()[k]) for k, v in stats_before.items())  # FrozenBN: stats kept

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for d in detections:
        n = d["boxes"].shape[0]
        assert d["boxes"].shape == (n, 4) and d["scores"].shape == (n,) and d["labels"].shape == (n,)
        assert n <= 100 and bool((d["boxes"] >= 0).all() and (d["boxes"] <= 128).all())
        assert bool(((d["labels"] >= 1) & (d["labels"] <= 2)).all())
        assert bool((d["scores"][:-1] >= d["scores"][1:]).all())


def test_frozen_backbone_needs_weights():
    with pytest.raises(UserError, match="Freezing a backbone .* keeps its initial weights"):
        resnest_backbone("resnest14", freeze_stages=2)


def test_deeplabv3_head_on_the_stride_32_map(pretrained_file):
    """The segmentation snippet of docs/after_training.md, on resnest14 at 64 px."""
    from torchvision.models.segmentation import DeepLabV3
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    body = resnest_backbone("resnest14", weights=pretrained_file, out_indices=(4,), freeze_bn=True)
    model = DeepLabV3(NamedFeatures(body, ("out",)), DeepLabHead(body.channels[-1], 3))
    x = torch.randn(2, 3, 64, 64)
    model.train()
    out = model(x)["out"]
    assert out.shape == (2, 3, 64, 64)  # upsampled back to the input size
    loss = torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 64, 64)))
    loss.backward()
    assert torch.isfinite(loss) and body.layer4[0].conv3.weight.grad.abs().sum() > 0
    assert isinstance(body.layer4[0].bn3, FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="1 feature maps .* need as many names"):
        NamedFeatures(body, ("aux", "out"))
