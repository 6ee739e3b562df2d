"""The parity check every backend test relies on does catch wrong outputs."""
import torch
from zip_cases import ZipCase, make_inputs

from visionzip_kernels.ops.zip_tokens import reference
from visionzip_kernels.testing.parity import compare_to_reference


def test_reference_output_passes():
    for dtype in (torch.float32, torch.bfloat16):
        inputs = make_inputs(ZipCase(2, 40, 16, 2, 8, 6, 4), dtype, seed=1)
        assert compare_to_reference(*reference.zip_tokens(**inputs), inputs).ok


def test_wrong_index_is_caught():
    inputs = make_inputs(ZipCase(2, 40, 16, 2, 8, 6, 4), torch.float32, seed=2)
    tokens, dominant_idx = reference.zip_tokens(**inputs)
    dominant_idx[1, 3] += 1
    parity = compare_to_reference(tokens, dominant_idx, inputs)
    assert not parity.indices_equal and not parity.ok


def test_value_error_beyond_tolerance_is_caught():
    for dtype, nudge in ((torch.float32, 1e-4), (torch.float16, 0.05), (torch.bfloat16, 0.2)):
        inputs = make_inputs(ZipCase(2, 40, 16, 2, 8, 6, 4), dtype, seed=3)
        tokens, dominant_idx = reference.zip_tokens(**inputs)
        tokens[0, -1, 5] += nudge
        parity = compare_to_reference(tokens, dominant_idx, inputs)
        assert parity.indices_equal and not parity.within_tolerance, dtype


def test_nan_and_wrong_shape_are_caught():
    inputs = make_inputs(ZipCase(1, 30, 8, 2, 4, 5, 3), torch.bfloat16, seed=4)
    tokens, dominant_idx = reference.zip_tokens(**inputs)
    tokens[0, 6, 0] = float("nan")
    assert not compare_to_reference(tokens, dominant_idx, inputs).ok
    assert not compare_to_reference(tokens[:, :-1], dominant_idx, inputs).ok
