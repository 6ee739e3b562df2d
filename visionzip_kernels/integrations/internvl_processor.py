"""VisionZip in ``InternVLProcessor``: each tile's reduced placeholder count.

An InternVL processor writes ``<img>``, then ``image_seq_length`` image tokens per tile of the
image (thumbnail included), then ``</img>``; every count it gives (``replace_image_token``,
``replace_video_token``, ``_get_num_multimodal_tokens``) reads that one attribute. With VisionZip
a tile keeps ``dominant + contextual`` tokens, so the instance's ``image_seq_length`` is set to
that, and put back on removal. A video frame is a tile to the model and is zipped the same way.
"""
from __future__ import annotations

from .budget import Budget
from .handle import AttributeSnapshot


def patch_internvl_processor(processor, budget: Budget) -> list[AttributeSnapshot]:
    """Make ``processor`` write ``budget.tokens`` image tokens per tile; the snapshot undoes it."""
    snapshot = AttributeSnapshot(processor, "image_seq_length", processor.image_seq_length)
    processor.image_seq_length = budget.tokens
    return [snapshot]
