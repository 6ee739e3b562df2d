"""Triton kernels, one module per kernel family; importing a module needs the ``triton`` package.

On CUDA tensors they compile for the GPU; on CPU tensors they run only under Triton's interpreter
(``TRITON_INTERPRET=1``, set before ``triton`` is imported).
"""
