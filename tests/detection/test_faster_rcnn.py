"""The detector's key map (faster_rcnn_ag.pth layout), its errors, and the forward pass's shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m3sgg.detection.faster_rcnn import (
    ActionGenomeDetector,
    from_original_key,
    to_original_key,
)
from m3sgg.errors import DataError

from .conftest import TINY, randomize


def test_key_map_names() -> None:
    assert to_original_key("base.layer3.0.downsample.1.running_var") == (
        "RCNN_base.6.0.downsample.1.running_var"
    )
    assert to_original_key("head.layer4.2.conv3.weight") == "RCNN_top.0.2.conv3.weight"
    assert to_original_key("rpn.cls_score.bias") == "RCNN_rpn.RPN_cls_score.bias"
    assert from_original_key("RCNN_base.0.weight") == "base.conv1.weight"
    assert from_original_key("RCNN_bbox_pred.weight") == "bbox_pred.weight"
    with pytest.raises(KeyError):
        from_original_key("RCNN_base.2.weight")  # the ReLU has no weights


def test_round_trip_through_the_original_layout(tmp_path: Path) -> None:
    model = randomize(ActionGenomeDetector(TINY))
    state = model.original_state_dict()
    assert all(k.startswith("RCNN_") for k in state)
    # The real file has 634 tensors for ResNet-101; here every weight of the tiny net is mapped.
    assert len(state) == len(model.state_dict())
    path = tmp_path / "faster_rcnn_ag.pth"
    torch.save({"model": state, "epoch": 3}, path)
    loaded = ActionGenomeDetector.from_original(path)
    assert not loaded.training
    assert loaded.config.resnet == TINY.resnet  # widths and depths read from the weights
    ours = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(ours[key], value), key
    # Without the batch-norm counters (older torch) it loads too.
    plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    ActionGenomeDetector.from_original(plain)


def test_resnet101_layout_has_the_released_file_s_tensor_count() -> None:
    with torch.device("meta"):
        model = ActionGenomeDetector()
    state = model.original_state_dict()
    # faster_rcnn_ag.pth holds 634 tensors: 530 weights and statistics (conv1 + bn1: 5; 33
    # bottlenecks: 15 each; 4 projections: 5 each; RPN 6; classifier and regressor 4) and the
    # num_batches_tracked counter of each of the 104 batch norms.
    assert len(state) == 634
    assert sum(k.endswith("num_batches_tracked") for k in state) == 104
    assert state["RCNN_cls_score.weight"].shape == (37, 2048)
    assert state["RCNN_bbox_pred.weight"].shape == (148, 2048)
    assert state["RCNN_rpn.RPN_cls_score.weight"].shape == (24, 512, 1, 1)
    assert state["RCNN_base.6.22.conv3.weight"].shape == (1024, 256, 1, 1)


def _state() -> dict[str, torch.Tensor]:
    return randomize(ActionGenomeDetector(TINY)).original_state_dict()


def test_unknown_missing_and_mis_shaped_keys_are_one_error_naming_them() -> None:
    state = _state()
    state["RCNN_extra.weight"] = torch.zeros(1)
    del state["RCNN_rpn.RPN_Conv.bias"]
    state["RCNN_bbox_pred.bias"] = torch.zeros(5)
    with pytest.raises(DataError) as info:
        ActionGenomeDetector.from_original(state, config=TINY)
    message = str(info.value)
    assert "\n" not in message
    assert "unknown keys [RCNN_extra.weight]" in message
    assert "missing keys [RCNN_rpn.RPN_Conv.bias]" in message
    assert "mis-shaped keys [RCNN_bbox_pred.bias (5,) (expected (148,))]" in message


def test_bad_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        ActionGenomeDetector.from_original(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable torch checkpoint"):
        ActionGenomeDetector.from_original(garbage)
    bare = tmp_path / "bare.pth"
    torch.save(_state(), bare)  # a state dict without the {"model": ...} wrapper
    with pytest.raises(DataError, match="under 'model'"):
        ActionGenomeDetector.from_original(bare)
    with pytest.raises(DataError, match=r"missing keys \[RCNN_base.0.weight\]"):
        ActionGenomeDetector.from_original({"RCNN_cls_score.weight": torch.zeros(37, 8)})


def test_forward_shapes_and_proposal_rules(tiny_detector: ActionGenomeDetector) -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 96, 160, generator=gen) * 50
    im_info = torch.tensor([[96.0, 160.0, 1.5], [96.0, 160.0, 1.5]])
    with torch.no_grad():
        out = tiny_detector(images, im_info)
    r = TINY.post_nms_top_n
    assert out.rois.shape == (2, r, 5)
    assert out.class_probs.shape == (2, r, 37) and out.box_deltas.shape == (2, r, 148)
    assert out.base.shape == (2, TINY.resnet.base_channels, 6, 10)  # stride 16
    assert out.features.shape == (2, r, TINY.resnet.head_channels)
    torch.testing.assert_close(out.class_probs.sum(2), torch.ones(2, r))
    assert torch.equal(out.rois[:, :, 0], torch.tensor([[0.0] * r, [1.0] * r]))
    boxes = out.rois[:, :, 1:]
    assert boxes.min() >= 0 and boxes[..., 0::2].max() <= 159 and boxes[..., 1::2].max() <= 95
    # Each frame's proposals do not depend on the other frames of the batch.
    with torch.no_grad():
        alone = tiny_detector(images[1:], im_info[1:])
    torch.testing.assert_close(alone.rois[0, :, 1:], out.rois[1, :, 1:])
    torch.testing.assert_close(alone.features[0], out.features[1])
