"""The ops, one folder each: ``<op>/op.py`` (the public function, its validation and backends),
``<op>/reference.py`` (the contract in PyTorch), ``<op>/triton*.py`` (the Triton kernels); their
C++ and CUDA kernels are ``csrc/<op>_cpu.cpp`` and ``csrc/<op>_cuda.cu``. ``triton_math.py`` holds
the arithmetic every Triton kernel shares."""
