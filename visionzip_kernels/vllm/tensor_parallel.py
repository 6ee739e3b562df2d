"""The head reduction VisionZip needs when vLLM splits a vision encoder's heads over ranks.

VisionZip ranks tokens by the attention they receive summed over all heads, and merges the
remaining tokens by the similarity of their keys averaged over all heads. With tensor parallelism
each rank holds only ``heads / tp_size`` heads, so a rank that zipped on its own heads would keep
other tokens than its neighbours (and than one rank would). Here each rank sums its own heads, one
all-reduce (sum) over the tensor-parallel group adds the ranks' sums, and the total is divided by
the number of heads: every rank then holds the head-mean of the whole layer and zips the same
tokens as a single rank does.
"""
from __future__ import annotations

import torch


def reduce_heads(
    importance: torch.Tensor, key: torch.Tensor, total_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``zip_tokens``' importance and merge keys over all ``total_heads`` heads of a layer.

    importance: ``[B, h, N]`` float32, the attention each token receives in this rank's ``h``
    heads (``attention_importance``); key: ``[B, h, N, hd]`` this rank's keys.

    When the rank holds every head (one rank, or vLLM's data-parallel encoder) both are returned
    as given: ``zip_tokens`` reduces the heads itself, exactly as in the Hugging Face integration.
    Otherwise returns ``(scores [B, N], keys [B, N, hd])``, float32: the head-means of the whole
    layer, from one all-reduce over the tensor-parallel group.
    """
    local_heads = importance.shape[1]
    if local_heads == total_heads:
        return importance, key
    from vllm.distributed import tensor_model_parallel_all_reduce

    batch, _, tokens = importance.shape
    head_sums = torch.cat([importance.sum(dim=1).flatten(), key.float().sum(dim=1).flatten()])
    head_means = tensor_model_parallel_all_reduce(head_sums) / total_heads
    scores, keys = head_means.split([batch * tokens, head_sums.numel() - batch * tokens])
    return scores.view(batch, tokens), keys.view(batch, tokens, key.shape[-1])
