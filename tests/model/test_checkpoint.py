import dataclasses

import numpy as np
import pytest
import torch

from geoseg.errors import ModelError
from geoseg.model import (
    ModelCard,
    build_model,
    canonical_arch,
    create_module,
    default_model_path,
    fold_logit_offsets,
    load_model,
    output_stride_of,
    read_card,
    save_checkpoint,
)
from geoseg.types import ClassTable


def card(**kw):
    base = dict(
        arch="unet",
        encoder="resnet18",
        bands=("red", "green", "blue"),
        mean=(1.0, 2.0, 3.0),
        std=(4.0, 5.0, 6.0),
        classes=ClassTable.default(3),
    )
    return ModelCard(**{**base, **kw})


class SharedArchTester:
    """Each architecture's test is a few-line subclass (as in smp's tests/models)."""

    arch = "unet"
    encoder = "resnet18"

    def test_builds_and_keeps_shape(self):
        module = create_module(self.arch, self.encoder, 4, 5)
        stride = output_stride_of(module)
        x = torch.zeros(1, 4, 2 * max(stride, 32), 2 * max(stride, 32))
        with torch.inference_mode():
            y = module.eval()(x)
        assert y.shape == (1, 5, *x.shape[2:])

    def test_logit_offsets_fold_into_the_head(self):
        # what the trainer's prior correction relies on: a bias shift moves every output logit
        torch.manual_seed(0)
        module = create_module(self.arch, self.encoder, 3, 5).eval()
        x = torch.rand(2, 3, 64, 64)
        offsets = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25])
        with torch.inference_mode():
            before = module(x)
        fold_logit_offsets(module, offsets.tolist())
        with torch.inference_mode():
            after = module(x)
        torch.testing.assert_close(after, before + offsets.view(1, -1, 1, 1), atol=1e-5, rtol=0)


class TestUnet(SharedArchTester):
    arch = "unet"


class TestDeepLabV3Plus(SharedArchTester):
    arch = "deeplabv3+"


class TestFPN(SharedArchTester):
    arch = "fpn"


class TestPSPNet(SharedArchTester):
    arch = "pspnet"


class TestTimmEncoder(SharedArchTester):
    arch = "unet"
    encoder = "tu-mobilenetv3_small_050"


def test_unknown_arch_lists_choices():
    with pytest.raises(ModelError, match="choose one of: .*deeplabv3plus.*unet"):
        canonical_arch("segnet")
    with pytest.raises(ModelError, match="encoder 'nope'"):
        create_module("unet", "nope", 3, 2)


def test_card_round_trip_and_summary():
    c = card(metrics={"miou": 0.7}, licence="MIT")
    assert ModelCard.from_dict(c.to_dict()) == c
    text = c.summary()
    assert "class_2" in text and "miou: 0.7000" in text and "MIT" in text
    with pytest.raises(ModelError, match="unknown fields"):
        ModelCard.from_dict({**c.to_dict(), "colour": 1})
    with pytest.raises(ModelError, match="3 bands but 2 means"):
        card(mean=(1.0, 2.0))
    assert "tta:" not in text  # a card without a test-time augmentation says nothing of it
    mirrored = card(tta="mirror")
    assert ModelCard.from_dict(mirrored.to_dict()) == mirrored
    assert "tta:          mirror (run by default; --tta none turns it off)" in mirrored.summary()
    # cards written before the field existed load with tta None
    assert ModelCard.from_dict({k: v for k, v in c.to_dict().items() if k != "tta"}).tta is None


def test_card_states_the_input_values_it_was_trained_on():
    default = card().input_spec
    assert (default.dtype, default.value_range) == ("uint8", (0.0, 255.0))
    assert default.p2_range == (0.0, 114.75) and default.p98_range == (140.25, 255.0)
    assert card(dtype="float32").input_spec.value_range == (0.0, 1.0)
    assert card(dtype="uint16").input_spec.value_range == (0.0, 65535.0)
    twelve = card(dtype="uint16", input_range=(0.0, 4095.0), input_p98_range=(2000.0, 4095.0))
    assert twelve.input_spec.value_range == (0.0, 4095.0)
    assert twelve.input_spec.p98_range == (2000.0, 4095.0)
    assert ModelCard.from_dict(twelve.to_dict()) == twelve
    assert "(uint16, values 0-4095)" in twelve.summary()
    assert "scaled (--scale auto)" in twelve.summary()
    # cards written before the fields existed: the dtype's range
    old = {k: v for k, v in card().to_dict().items() if not k.startswith("input_")}
    assert ModelCard.from_dict(old).input_spec == default
    with pytest.raises(ModelError, match="input_range .* must be"):
        card(input_range=(0.0, 255.0), input_p2_range=(0.0, 300.0))
    with pytest.raises(ModelError, match="2nd percentile's below the 98th"):
        card(input_p2_range=(0.0, 150.0), input_p98_range=(140.0, 255.0))


def test_checkpoint_round_trip_half_precision(tmp_path):
    model = build_model(card(arch_kwargs={"decoder_channels": [32, 16, 16, 8, 8]}))
    path = save_checkpoint(model, tmp_path / "m.pt", half=True)
    loaded = load_model(path)
    assert loaded.card == model.card
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        a, b = model.module.eval()(x), loaded.module(x)
    assert torch.allclose(a, b, atol=5e-2)  # weights stored as float16
    assert not (tmp_path / "m.pt.part").exists()


def test_torchgeo_lightning_checkpoint_loads(tmp_path):
    import lightning
    from torchgeo.trainers import SemanticSegmentationTask

    task = SemanticSegmentationTask(
        model="unet", backbone="resnet18", weights=None, in_channels=3, num_classes=4
    )
    path = tmp_path / "task.ckpt"
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    table = ClassTable.from_list([{"name": n} for n in ["a", "b", "c", "d"]])
    model = load_model(path, classes=table, mean=[10, 10, 10], std=[2, 2, 2])
    assert model.card.classes.names == ["a", "b", "c", "d"] and model.card.mean == (10, 10, 10)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model.module(x), task.model.eval()(x))
    with pytest.raises(ModelError, match="predicts 4 classes but 2"):
        load_model(path, classes=ClassTable.default(2))


def test_logit_offsets_must_match_the_classes():
    module = create_module("unet", "resnet18", 3, 4)
    with pytest.raises(ModelError, match="3 logit offsets given for a network with 4 classes"):
        fold_logit_offsets(module, [0.0, 0.0, 0.0])
    with pytest.raises(ModelError, match="segmentation_head"):
        fold_logit_offsets(torch.nn.Conv2d(3, 4, 1), [0.0] * 4)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="corrupt"):
        load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ModelError, match="neither a geoseg checkpoint"):
        load_model(other)
    # weights that do not fit the card's architecture
    model = build_model(card())
    path = save_checkpoint(model, tmp_path / "ok.pt")
    payload = torch.load(path, weights_only=True)
    payload["card"]["encoder"] = "resnet34"
    torch.save(payload, path)
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path)


def test_class_table_parsing():
    table = ClassTable.from_list(
        [{"name": "water", "color": "#0000ff"}, {"name": "land", "color": [1, 2, 3]}]
    )
    assert table.by_id(0).color == (0, 0, 255) and table.colormap()[1] == (1, 2, 3, 255)
    from geoseg.errors import ConfigError

    with pytest.raises(ConfigError, match="unique"):
        ClassTable.from_list([{"name": "a"}, {"name": "a"}])
    with pytest.raises(ConfigError, match="colour"):
        ClassTable.from_list([{"name": "a", "color": "#zz"}])
    assert dataclasses.replace(card(), name="x").name == "x"
    assert np.array_equal(np.array(ClassTable.default(2).names), ["class_0", "class_1"])


def test_read_card_needs_no_torch_and_matches_load_model(tmp_path):
    model = build_model(card(gsd_range=(0.5, 2.0), arch_kwargs={"decoder_channels": [8] * 5}))
    path = save_checkpoint(model, tmp_path / "m.pt", half=True)
    assert read_card(path) == load_model(path).card
    assert read_card(path).gsd_range == (0.5, 2.0)
    # in a fresh interpreter, the shipped model's card is read without importing torch
    import subprocess
    import sys

    code = (
        "import sys; from geoseg.model import read_card; c = read_card(); "
        "print(c.name, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if default_model_path().exists():
        assert out.stdout.split()[-1] == "False", out.stdout
        assert read_card() == load_model().card
    # files it cannot read that way go through load_model, with its errors
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="corrupt"):
        read_card(junk)
    with pytest.raises(ModelError, match="does not exist"):
        read_card(tmp_path / "none.pt")
