// Adds a row of float16 values to a float32 accumulator, acc[i] += float(src[i]), with the F16C
// conversion instructions where the CPU has them (checked once, at run time) and the portable
// scalar conversion elsewhere. float16 -> float32 is exact, so both paths give the same sums.
#pragma once

#include <c10/util/Half.h>

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define VISIONZIP_HAS_F16C_PATH 1
#endif

namespace visionzip {

inline void add_half_row_scalar(const c10::Half* src, float* acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<float>(src[i]);
}

#ifdef VISIONZIP_HAS_F16C_PATH
__attribute__((target("avx,f16c"))) inline void add_half_row_f16c(const c10::Half* src, float* acc, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 wide = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), wide));
  }
  add_half_row_scalar(src + i, acc + i, n - i);
}
#endif

inline void add_half_row(const c10::Half* src, float* acc, int64_t n) {
#ifdef VISIONZIP_HAS_F16C_PATH
  static const bool has_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  if (has_f16c) {
    add_half_row_f16c(src, acc, n);
    return;
  }
#endif
  add_half_row_scalar(src, acc, n);
}

}  // namespace visionzip
