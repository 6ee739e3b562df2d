"""The op as PyTorch sees it: schema, fake kernel, opcheck, torch.compile, backend listing."""
import pytest
import torch
from zip_cases import ZipCase, assert_matches_reference, make_inputs

import visionzip_kernels as vz

OPCHECK_CASES = [
    ZipCase(2, 33, 24, 3, 8, 6, 4),
    ZipCase(1, 40, 16, 2, 8, 5, 0, has_cls=False, attn_layout="full", key_layout="heads"),
    ZipCase(3, 21, 10, 2, 4, 4, 3, attn_layout="scores", key_layout="none"),
]


def op_args(inputs):
    return (inputs["hidden"], inputs["attn"], inputs["k_dom"], inputs["k_ctx"], inputs["keys"], inputs["has_cls"])


@pytest.mark.parametrize("op_name", ["zip_tokens", "_zip_tokens_cpu"])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck(op_name, case):
    inputs = make_inputs(case, torch.bfloat16, seed=2)
    torch.library.opcheck(getattr(torch.ops.visionzip, op_name), op_args(inputs))


def test_fake_kernel_gives_shapes_and_validates():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        hidden, attn = torch.empty(4, 577, 1024, dtype=torch.float16), torch.empty(4, 16, 577)
        tokens, dominant_idx = torch.ops.visionzip.zip_tokens(hidden, attn, 54, 10, None, True)
        assert tokens.shape == (4, 64, 1024) and tokens.dtype == torch.float16
        assert dominant_idx.shape == (4, 54) and dominant_idx.dtype == torch.int64
        with pytest.raises(ValueError, match="`k_dom` \\+ `k_ctx` must be <= N=577"):
            torch.ops.visionzip.zip_tokens(hidden, attn, 570, 10, None, True)


@pytest.mark.parametrize("entry", ["function", "torch.ops"])
def test_torch_compile_fullgraph(entry):
    inputs = make_inputs(ZipCase(2, 45, 32, 4, 8, 9, 5, key_layout="heads"), torch.float32, seed=3)

    def zipped_and_projected(hidden, attn, keys):
        if entry == "function":
            tokens, dominant_idx = vz.zip_tokens(hidden, attn, 9, 5, keys)
        else:
            tokens, dominant_idx = torch.ops.visionzip.zip_tokens(hidden, attn, 9, 5, keys, True)
        return tokens * 2.0, dominant_idx

    compiled = torch.compile(zipped_and_projected, fullgraph=True, backend="aot_eager")
    tokens, dominant_idx = compiled(inputs["hidden"], inputs["attn"], inputs["keys"])
    assert_matches_reference(tokens / 2.0, dominant_idx, inputs)


def test_torch_compile_inductor():
    """The default compiler too: the op stays opaque and the surrounding code is generated."""
    inputs = make_inputs(ZipCase(2, 45, 32, 4, 8, 9, 5, key_layout="heads"), torch.float32, seed=4)

    def zipped_and_projected(hidden, attn, keys):
        tokens, dominant_idx = vz.zip_tokens(hidden, attn, 9, 5, keys)
        return tokens * 2.0, dominant_idx

    compiled = torch.compile(zipped_and_projected, fullgraph=True)
    tokens, dominant_idx = compiled(inputs["hidden"], inputs["attn"], inputs["keys"])
    assert_matches_reference(tokens / 2.0, dominant_idx, inputs)


def test_available_backends(monkeypatch):
    """Exactly the backends that run, fastest first, for each state of Triton and the CUDA build."""
    from visionzip_kernels import _extension, backends

    monkeypatch.setattr(backends, "triton_importable", lambda: True)
    for interpreted, built, on_cpu, on_cuda in [
        (True, True, ["cpu", "triton", "reference"], ["cuda", "reference"]),
        (False, True, ["cpu", "reference"], ["cuda", "triton", "reference"]),
        (False, False, ["cpu", "reference"], ["triton", "reference"]),
    ]:
        monkeypatch.setattr(backends, "triton_interpreter_on", lambda: interpreted)
        monkeypatch.setattr(_extension, "CUDA_EXTENSION_BUILT", built)
        assert vz.available_backends("cpu") == on_cpu
        assert vz.available_backends("cuda") == on_cuda
        assert vz.available_backends(torch.device("cuda", 1)) == on_cuda
        assert vz.available_backends("meta") == ["reference"]
    monkeypatch.setattr(backends, "triton_importable", lambda: False)
    assert vz.available_backends("cuda") == ["reference"]
    with pytest.raises(ValueError, match="the `triton` package is not installed"):
        vz.zip_tokens(torch.randn(1, 5, 4), torch.rand(1, 5), 2, 1, backend="triton")


def test_meta_tensors_get_the_output_shapes_and_a_clear_error_for_triton():
    inputs = make_inputs(ZipCase(2, 33, 24, 3, 8, 6, 4, key_layout="heads"), torch.float16, device="meta")
    tokens, dominant_idx = vz.zip_tokens(**inputs)
    assert tokens.device.type == "meta" and tokens.shape == (2, 10, 24) and tokens.dtype == torch.float16
    assert dominant_idx.shape == (2, 6) and dominant_idx.dtype == torch.int64
    with pytest.raises(ValueError, match="backend='triton' is not available on meta: it runs on cuda tensors"):
        vz.zip_tokens(**inputs, backend="triton")
