"""CNN explainers: Grad-CAM against a hooked oracle and a planted feature, IG completeness, LRP, contracts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from classic_doubles import TinyCnn, planted_detector_cnn
from torch import nn

from counterclip.errors import InputError, ModelLoadError
from counterclip.explainers.classic import (
    CNN_METHODS,
    black_baseline,
    explain_cnn,
    get_layer,
    layer_sweep,
    list_layers,
    load_class_names,
    load_cnn,
    overlap_matrix,
    resolve_targets,
    top_region_iou,
)


def gradcam_oracle(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: int) -> torch.Tensor:
    """Grad-CAM by hand: hooked activations A and gradients dy/dA, weights = spatial mean of gradients.

    Runs on a copy with out-of-place ReLUs, so a following in-place ReLU cannot overwrite A.
    """
    names = {id(module): name for name, module in model.named_modules()}
    model = copy.deepcopy(model).eval()
    layer = dict(model.named_modules())[names[id(layer)]]
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    store: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        store["activation"] = output
        output.register_hook(lambda grad: store.__setitem__("gradient", grad))

    handle = layer.register_forward_hook(hook)
    try:
        model(x.clone().requires_grad_(True))[0, target].backward()
    finally:
        handle.remove()
    weights = store["gradient"].mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * store["activation"]).sum(dim=1))[0].detach()


@pytest.mark.parametrize("layer_name", ["features.0", "features.2"])
def test_gradcam_equals_hooked_oracle(tiny_cnn: TinyCnn, layer_name: str) -> None:
    x = torch.randn(1, 3, 12, 12)
    explanations = explain_cnn(tiny_cnn, x, "gradcam", targets=[0, 2], layer=layer_name)
    for explanation, target in zip(explanations, [0, 2], strict=True):
        oracle = gradcam_oracle(tiny_cnn, x, get_layer(tiny_cnn, layer_name), target)
        np.testing.assert_allclose(explanation.patch_map, oracle.numpy(), rtol=1e-5, atol=1e-7)
        upsampled = nn.functional.interpolate(oracle[None, None], size=(12, 12), mode="bilinear")[0, 0]
        np.testing.assert_allclose(explanation.pixel_map, upsampled.numpy(), rtol=1e-5, atol=1e-7)
        assert explanation.extras["class_index"] == target
        with torch.no_grad():
            assert explanation.score == pytest.approx(float(tiny_cnn.eval()(x)[0, target]), abs=1e-6)
        assert (explanation.forward_passes, explanation.backward_passes) == (1, 1)


def test_gradcam_peaks_on_planted_feature() -> None:
    model = planted_detector_cnn()
    x = torch.rand(1, 3, 32, 32) * 0.3
    x[0, 0, 20:24, 6:10] = 1.0  # the bright red patch the detector looks for
    [explanation] = explain_cnn(model, x, "gradcam", targets=[1], layer="features.2")
    row, column = np.unravel_index(np.argmax(explanation.pixel_map), explanation.pixel_map.shape)
    assert 20 <= row <= 23 and 6 <= column <= 9
    assert explanation.pixel_map[:16].max() == 0.0  # nothing lights up away from the patch


@pytest.mark.parametrize("method", ["ig", "lrp"])
def test_conservation_on_cnn(method: str) -> None:
    """IG: attributions sum to f(x) - f(baseline). LRP-epsilon with zero biases: they sum to f(x)."""
    torch.manual_seed(1)
    model = TinyCnn()
    if method == "lrp":
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
    x = torch.randn(1, 3, 10, 10)
    [explanation] = explain_cnn(model, x, method, targets=[1], n_steps=128)
    with torch.no_grad():
        expected = model(x)[0, 1] - (model(torch.zeros_like(x))[0, 1] if method == "ig" else 0.0)
    assert explanation.pixel_map.sum() == pytest.approx(float(expected), rel=1e-3, abs=1e-5)
    assert abs(explanation.extras["convergence_delta"]) < 1e-3 * max(1.0, abs(float(expected)))


def test_ig_with_a_black_baseline_is_complete(tiny_cnn: TinyCnn) -> None:
    x = torch.randn(1, 3, 8, 8)
    baseline = black_baseline(8)
    assert torch.allclose(
        baseline[0, :, 3, 5], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )
    [explanation] = explain_cnn(tiny_cnn, x, "ig", targets=[0], n_steps=128, ig_baseline=baseline)
    with torch.no_grad():
        expected = tiny_cnn.eval()(x)[0, 0] - tiny_cnn(baseline)[0, 0]
    assert explanation.pixel_map.sum() == pytest.approx(float(expected), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("method", CNN_METHODS)
def test_contract_no_hooks_state_restored_input_unchanged(tiny_cnn: TinyCnn, method: str) -> None:
    x = torch.randn(1, 3, 8, 8)
    before = x.clone()
    weights = {name: value.clone() for name, value in tiny_cnn.state_dict().items()}
    tiny_cnn.train()
    explanations = explain_cnn(tiny_cnn, x, method, targets=[0, 1], layer="features.2", n_steps=8)
    assert torch.equal(x, before) and not x.requires_grad
    assert tiny_cnn.training and all(m.training for m in tiny_cnn.modules())
    assert tiny_cnn.features[1].inplace is True
    assert all(parameter.grad is None for parameter in tiny_cnn.parameters())
    assert all(torch.equal(value, weights[name]) for name, value in tiny_cnn.state_dict().items())
    for module in tiny_cnn.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        assert not hasattr(module, "rule")  # Captum LRP's per-layer rules are gone
    assert [e.pixel_map.shape for e in explanations] == [(8, 8), (8, 8)]
    assert all(np.isfinite(e.pixel_map).all() for e in explanations)


def test_hooks_are_removed_when_the_method_fails(tiny_cnn: TinyCnn) -> None:
    with pytest.raises(InputError, match="layer 'classifier' gives a 2-D output"):
        explain_cnn(tiny_cnn, torch.randn(1, 3, 8, 8), "gradcam", layer="classifier")
    assert all(not m._forward_hooks and not m._backward_hooks for m in tiny_cnn.modules())
    assert tiny_cnn.training and tiny_cnn.features[1].inplace is True


def test_several_targets_equal_one_at_a_time(tiny_cnn: TinyCnn) -> None:
    x = torch.randn(1, 3, 9, 9)
    together = explain_cnn(tiny_cnn, x, "saliency", targets=[2, 0])
    for explanation, target in zip(together, [2, 0], strict=True):
        [alone] = explain_cnn(tiny_cnn, x, "saliency", targets=[target])
        np.testing.assert_allclose(explanation.pixel_map, alone.pixel_map, rtol=1e-6)


def test_default_target_is_top1(tiny_cnn: TinyCnn) -> None:
    x = torch.randn(1, 3, 8, 8)
    [explanation] = explain_cnn(tiny_cnn, x, "gradcam", layer="features.2")
    with torch.no_grad():
        assert explanation.extras["class_index"] == int(tiny_cnn.eval()(x).argmax())


def test_layer_listing_matches_named_modules() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    listing = list_layers(model, (1, 3, 32, 32))
    assert [info.name for info in listing] == [name for name, _ in model.named_modules() if name]
    by_name = {info.name: info for info in listing}
    assert by_name["layer4"].output_shape == (1, 512, 1, 1)
    assert by_name["layer1.0.conv1"].output_shape == (1, 64, 8, 8)
    assert by_name["fc"].output_shape == (1, 3) and by_name["fc"].type == "Linear"
    assert by_name["layer1.0.relu"].calls == 2  # torchvision reuses one ReLU twice per block
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_layer_names_it_and_suggests(tiny_cnn: TinyCnn) -> None:
    with pytest.raises(InputError, match=r"unknown layer name 'feature\.2'.*features\.2"):
        explain_cnn(tiny_cnn, torch.randn(1, 3, 8, 8), "gradcam", layer="feature.2")


def test_lrp_refuses_unsupported_layers() -> None:
    with pytest.raises(InputError, match="LRP does not support BasicBlock"):
        explain_cnn(
            torchvision.models.resnet18(weights=None, num_classes=2), torch.randn(1, 3, 32, 32), "lrp"
        )
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    with pytest.raises(InputError, match=r"LRP does not support layer type GELU \(layer '1'\)"):
        explain_cnn(model, torch.randn(1, 3, 8, 8), "lrp")
    assert all(not hasattr(m, "rule") for m in model.modules())


def test_layer_sweep_uses_each_layer() -> None:
    # A one-block-per-stage ResNet: the same layer1..layer4 names as ResNet-18, half the compute.
    model = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=3)
    x = torch.randn(1, 3, 32, 32)
    sweep = layer_sweep(model, x, ["layer1", "layer2", "layer3", "layer4"], target=1)
    assert [e.extras["layer"] for e in sweep] == ["layer1", "layer2", "layer3", "layer4"]
    assert [e.patch_map.shape for e in sweep] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(e.pixel_map.shape == (32, 32) for e in sweep)


def test_top_region_iou() -> None:
    a = np.zeros((10, 10))
    a[:2] = 1.0  # top 20% = first two rows
    b = np.zeros((10, 10))
    b[1:3] = 1.0
    assert top_region_iou(a, a) == 1.0
    assert top_region_iou(a, b) == pytest.approx(10 / 30)
    assert top_region_iou(a, np.zeros((10, 10))) == 0.0  # a flat map has no top region
    matrix = overlap_matrix([_map(a), _map(b)])
    assert matrix.tolist() == [[1.0, pytest.approx(1 / 3)], [pytest.approx(1 / 3), 1.0]]


def _map(values: np.ndarray):
    from counterclip.explainers.base import Explanation

    return Explanation(method="gradcam", modality="image", score=0.0, pixel_map=values)


def test_load_cnn_round_trip_and_refuses_pickles(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    original = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    save_file(original.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": original.state_dict()}, tmp_path / "w.pt")
    torch.save(original, tmp_path / "module.pt")
    x = torch.randn(1, 3, 32, 32)
    for name in ("w.safetensors", "w.pt"):
        loaded = load_cnn("resnet18", tmp_path / name).eval()
        assert loaded.fc.out_features == 5
        torch.testing.assert_close(loaded(x), original(x))
    with pytest.raises(ModelLoadError, match="weights-only"):
        load_cnn("resnet18", tmp_path / "module.pt")
    with pytest.raises(InputError, match="unknown torchvision architecture 'resnet19'.*resnet18"):
        load_cnn("resnet19")


def test_class_names(tmp_path) -> None:
    names = load_class_names()
    assert len(names) == 1000 and names[235] == "German shepherd" and names[208] == "Labrador retriever"
    assert resolve_targets(["german shepherd", "208", "Labrador"], names) == [235, 208, 208]
    with pytest.raises(InputError, match="'retriever' names no single class"):
        resolve_targets(["retriever"], names + ["retriever a", "retriever b"])
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    assert load_class_names(labels, 2) == ["cat", "dog"]
    with pytest.raises(InputError, match="has 2 names but the model has 3 outputs"):
        load_class_names(labels, 3)


def test_random_weights_are_the_same_on_every_run_and_leave_the_rng_alone() -> None:
    import torch

    from counterclip.explainers.classic.cnn_inputs import load_cnn

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first, second = load_cnn("resnet18"), load_cnn("resnet18")
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is where it was
