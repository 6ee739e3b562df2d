// Buffers of exactly the size asked for, 16-byte aligned as CUDA allocations are, so that an access
// a byte beyond (or before) one is an error AddressSanitizer reports: a tensor's storage read from a
// file, and the emulated shared memory.
#pragma once

#include <algorithm>
#include <cstddef>
#include <fstream>
#include <iterator>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace emulation {

using AlignedBytes = std::shared_ptr<unsigned char[]>;

inline AlignedBytes aligned_bytes(size_t size) {
  return AlignedBytes(new (std::align_val_t{16}) unsigned char[std::max<size_t>(size, 1)],
                      [](unsigned char* p) { operator delete[](p, std::align_val_t{16}); });
}

struct ExactStorage {
  AlignedBytes bytes;
  size_t size = 0;
  unsigned char* data() const { return bytes.get(); }
};

inline ExactStorage read_storage(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + path);
  const std::vector<unsigned char> content((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  ExactStorage storage;
  storage.size = content.size();
  storage.bytes = aligned_bytes(content.size());
  std::copy(content.begin(), content.end(), storage.bytes.get());
  return storage;
}

}  // namespace emulation
