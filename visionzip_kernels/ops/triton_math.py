"""Arithmetic that every Triton kernel of the package shares, defined once for the GPU and once
for Triton's interpreter (``TRITON_INTERPRET=1``): the one place where the two differ.

- ``mul_rn``, ``div_rn``, ``sqrt_rn``: correctly rounded float32 product, quotient and square root.
  On the GPU they are explicit PTX instructions (``mul.rn.f32``, ``div.rn.f32``, ``sqrt.rn.f32``),
  which the PTX assembler never contracts into fused multiply-adds and which keep subnormals; the
  launch option ``enable_fp_fusion=False`` would not be enough, since ``torch.compile`` recompiles
  kernels with its own options. Under the interpreter they are numpy float32 operations, which
  round each result on its own.
- ``dot_f32(a, b, acc)``: ``acc + a @ b`` accumulated in float32, ``a`` taken in ``b``'s dtype
  (a bool one-hot tile becomes 0/1), with IEEE float32 products for float32 tiles (never TF32).
  The interpreter multiplies bfloat16 tiles as raw bits (triton-lang/triton#11584) and converts
  to bfloat16 unreliably, so there both operands go to float32 directly: float16 and bfloat16
  products are exact in float32, so the result is the same.
- ``round_to(value, dtype)``: float32 rounded to nearest even in ``dtype`` (the interpreter
  truncates float32 to bfloat16, so there the rounding is done on the bits).

Under the interpreter the helpers are plain Python functions rather than ``triton.jit`` ones: a
kernel there is Python over numpy, and each call of a jitted helper re-patches ``triton.language``
(about a millisecond). ``helper`` is the decorator for a kernel's own helpers, for the same reason.
"""
import triton
import triton.language as tl

from ..backends import triton_interpreter_on

if triton_interpreter_on():

    def helper(fn):
        return fn

    def mul_rn(a, b):
        return a * b

    def div_rn(a, b):
        return a / b

    def sqrt_rn(a):
        return tl.sqrt(a)

    def dot_f32(a, b, acc):
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")

    def round_to(value, dtype):
        if dtype != tl.bfloat16:
            return value.to(dtype)
        bits = value.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)

else:
    helper = triton.jit

    @triton.jit
    def mul_rn(a, b):
        return tl.inline_asm_elementwise(
            "mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32, is_pure=True, pack=1
        )

    @triton.jit
    def div_rn(a, b):
        return tl.inline_asm_elementwise(
            "div.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32, is_pure=True, pack=1
        )

    @triton.jit
    def sqrt_rn(a):
        return tl.inline_asm_elementwise(
            "sqrt.rn.f32 $0, $1;", "=f,f", [a], dtype=tl.float32, is_pure=True, pack=1
        )

    @triton.jit
    def dot_f32(a, b, acc):
        return tl.dot(a.to(b.dtype), b, acc, input_precision="ieee")

    @triton.jit
    def round_to(value, dtype: tl.constexpr):
        return value.to(dtype)
