"""``qwen_vl_positions`` without an engine: positions carried exactly in every dtype, the text
after a tall image, and a second update that changes nothing."""
from __future__ import annotations

import pytest
import torch

from visionzip_kernels.vllm.qwen_vl_positions import (
    ImageRun,
    kept_positions,
    position_channels,
    prompt_positions,
)

IMAGE = 7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_position_channels_are_exact(dtype):
    """Rows and columns past 256 (where bfloat16 rounds 257 to 256) come back exactly."""
    width = 700
    kept_idx = torch.tensor([0, 256, 257, 699, 700 * 257 + 513, 700 * 300 + 699])
    features = torch.randn(len(kept_idx), 5, dtype=dtype)
    rows = torch.cat([features, position_channels(kept_idx, width, dtype)], dim=1)
    ids = [IMAGE] * len(kept_idx)
    stripped, positions, _ = kept_positions(ids, [rows], torch.zeros(3, len(ids), dtype=torch.int64), 0, IMAGE)
    assert torch.equal(stripped[0], features)
    assert torch.equal(positions[1], kept_idx // width)
    assert torch.equal(positions[2], kept_idx % width)


def test_text_after_a_tall_image_continues_after_its_height():
    """Two text tokens, an image of 6 x 3 merged tokens keeping 4, two text tokens: the image
    starts at 2 and the text after it at 2 + max(1, 6, 3) = 8; the kept tokens get their rows and
    columns when they arrive, in two chunks, and again unchanged after a preemption."""
    ids = [1, 2, IMAGE, IMAGE, IMAGE, IMAGE, 3, 4]
    positions, delta = prompt_positions(len(ids), [ImageRun(offset=2, length=4, longest_side=6)])
    assert positions.tolist() == [[0, 1, 2, 2, 2, 2, 8, 9]] * 3
    assert delta == 10 - len(ids)
    kept_idx = torch.tensor([0, 4, 13, 17])  # (0, 0), (1, 1), (4, 1), (5, 2) in a grid 3 wide
    rows = torch.cat([torch.zeros(4, 2), position_channels(kept_idx, 3, torch.float32)], dim=1)
    _, positions, _ = kept_positions(ids, [rows[:1]], positions, 0, IMAGE)
    _, positions, delta = kept_positions(ids, [rows[1:]], positions, 3, IMAGE)
    expected = [[0, 1, 2, 2, 2, 2, 8, 9], [0, 1, 2, 3, 6, 7, 8, 9], [0, 1, 2, 3, 3, 4, 8, 9]]
    assert positions.tolist() == expected
    assert delta == 10 - len(ids)
    _, again, _ = kept_positions(ids, [rows], positions, 0, IMAGE)
    assert again.tolist() == expected


def test_an_image_at_the_end_moves_the_delta():
    """The next position after a prompt that ends with an image is after its last kept token."""
    ids = [1, IMAGE, IMAGE]
    positions, _ = prompt_positions(len(ids), [ImageRun(offset=1, length=2, longest_side=4)])
    rows = position_channels(torch.tensor([2, 15]), 4, torch.float32)  # (0, 2), (3, 3)
    _, positions, delta = kept_positions(ids, [rows], positions, 0, IMAGE)
    assert positions.tolist() == [[0, 1, 1], [0, 1, 4], [0, 3, 4]]
    assert delta == 5 - len(ids)
