"""Every CUDA C++ kernel of the package once, on bounded shapes, for compute-sanitizer to watch.

Run by ``benchmarks/gpu_sanitize.sh`` under memcheck, racecheck, synccheck and initcheck (each tool
slows a launch by 10-100x, so the shapes are small but reach every path): zip_tokens with N = 577,
2880 and 4096 (the select path where each thread holds several tokens), D not a multiple of 8, a
strided view, k_dom = N and k_ctx = 41 and 45; attention_importance on its
CLS, tensor-core and CUDA-core paths; zip_tokens_varlen on two images. Each result is compared with
the CPU backend (the reference, for attention_importance), so a wrong value fails the run too.
Prints one line per case.
"""
from __future__ import annotations

import torch

import visionzip_kernels as vz


def zip_case(batch: int, n_tokens: int, width: int, k_dom: int, k_ctx: int, dtype, strided=False):
    gen = torch.Generator().manual_seed(n_tokens + width)
    hidden = torch.randn(batch, n_tokens, width + (3 if strided else 0), generator=gen).to(dtype)
    hidden = hidden[..., :width] if strided else hidden
    attn = torch.randn(batch, n_tokens, generator=gen).softmax(-1).to(dtype)
    keys = torch.randn(batch, n_tokens, 16, generator=gen).to(dtype)
    expected = vz.zip_tokens(hidden, attn, k_dom, k_ctx, keys, True, backend="cpu")
    got = vz.zip_tokens(hidden.cuda(), attn.cuda(), k_dom, k_ctx, keys.cuda(), True, backend="cuda")
    torch.testing.assert_close(got[1].cpu(), expected[1], rtol=0, atol=0)
    torch.testing.assert_close(got[0].cpu().float(), expected[0].float(), rtol=2e-2, atol=2e-2)
    print(f"zip_tokens B={batch} N={n_tokens} D={width} {k_dom}+{k_ctx} {dtype} strided={strided}: ok")


def importance_case(n_tokens: int, head_dim: int, has_cls: bool, dtype):
    gen = torch.Generator().manual_seed(n_tokens * head_dim)
    q, k = (torch.randn(1, 2, n_tokens, head_dim, generator=gen).to(dtype) for _ in range(2))
    expected = vz.attention_importance(q, k, has_cls, backend="reference")
    got = vz.attention_importance(q.cuda(), k.cuda(), has_cls, backend="cuda")
    torch.testing.assert_close(got.cpu(), expected, rtol=2e-2, atol=1e-4)
    print(f"attention_importance N={n_tokens} hd={head_dim} cls={has_cls} {dtype}: ok")


def varlen_case(dtype):
    gen = torch.Generator().manual_seed(5)
    seqlens = [577, 130]
    hidden = torch.randn(sum(seqlens), 40, generator=gen).to(dtype)
    importance = torch.rand(sum(seqlens), generator=gen).to(dtype)
    cu_seqlens = torch.tensor([0, seqlens[0], sum(seqlens)], dtype=torch.int32)
    expected = vz.zip_tokens_varlen(hidden, importance, cu_seqlens, 30, 8, seqlens=seqlens, backend="cpu")
    got = vz.zip_tokens_varlen(hidden.cuda(), importance.cuda(), cu_seqlens.cuda(), 30, 8, seqlens=seqlens,
                               backend="cuda")
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu().float(), e.float(), rtol=2e-2, atol=2e-2)
    print(f"zip_tokens_varlen seqlens={seqlens} {dtype}: ok")


def main() -> None:
    zip_case(2, 577, 64, 54, 10, torch.bfloat16)
    zip_case(1, 2880, 36, 54, 10, torch.bfloat16, strided=True)
    zip_case(1, 4096, 20, 300, 45, torch.float16)
    zip_case(1, 60, 12, 60, 0, torch.float32)
    zip_case(1, 211, 16, 20, 41, torch.float32)
    importance_case(577, 64, True, torch.bfloat16)
    importance_case(130, 72, False, torch.float16)
    importance_case(70, 40, False, torch.float32)
    varlen_case(torch.bfloat16)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
