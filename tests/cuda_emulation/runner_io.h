// Inputs and outputs of the emulation runners: NAME=VALUE arguments, tensors read from files into
// buffers of exactly their storage's size (so that a read past the storage is outside the buffer),
// and output buffers between guard zones of a poison value, checked after the kernels ran, so that
// any write outside an output is an error rather than a chance corruption.
#pragma once

#include "device_primitives_host.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace emulation {

// NAME=VALUE arguments by name.
struct Args {
  std::map<std::string, std::string> values;

  Args(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      const size_t eq = arg.find('=');
      if (eq == std::string::npos) throw std::runtime_error("NAME=VALUE expected: " + arg);
      values[arg.substr(0, eq)] = arg.substr(eq + 1);
    }
  }
  const std::string& text(const std::string& name) const {
    const auto found = values.find(name);
    if (found == values.end()) throw std::runtime_error("missing argument " + name);
    return found->second;
  }
  int64_t integer(const std::string& name) const { return std::stoll(text(name)); }
};

inline std::vector<int64_t> int_list(const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(std::stoll(item));
  return values;
}

// A tensor given as FILE:DTYPE:OFFSET:SIZES:STRIDES (sizes and strides comma separated, in
// elements; the file holds the tensor's storage).
struct TensorArg {
  std::vector<unsigned char> storage;  // exactly the file's bytes, at malloc's 16-byte alignment
  std::string dtype;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;

  template <typename T>
  const T* data() const {
    return reinterpret_cast<const T*>(storage.data()) + offset;
  }
};

inline TensorArg read_tensor(const std::string& spec) {
  std::vector<std::string> parts;
  std::stringstream stream(spec);
  std::string part;
  while (std::getline(stream, part, ':')) parts.push_back(part);
  if (parts.size() != 5) throw std::runtime_error("tensor spec FILE:DTYPE:OFFSET:SIZES:STRIDES expected: " + spec);
  std::ifstream file(parts[0], std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + parts[0]);
  TensorArg t;
  t.storage.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  if (reinterpret_cast<uintptr_t>(t.storage.data()) % 16 != 0) throw std::runtime_error("storage not 16-byte aligned");
  t.dtype = parts[1];
  t.offset = std::stoll(parts[2]);
  t.sizes = int_list(parts[3]);
  t.strides = int_list(parts[4]);
  return t;
}

// Calls f(T{}) with T the element type named by `dtype`.
template <typename F>
void with_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") {
    f(float{});
  } else if (dtype == "float16") {
    f(__half{});
  } else if (dtype == "bfloat16") {
    f(__nv_bfloat16{});
  } else {
    throw std::runtime_error("unknown dtype " + dtype);
  }
}

// `size` elements of T between two guard zones, all of `poison` until the kernels write them.
template <typename T>
class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 64;  // elements on each side

  GuardedBuffer(size_t size, T poison) : size_(size), poison_(poison), all_(size + 2 * kGuard, poison) {}
  T* data() { return all_.data() + kGuard; }
  const T* data() const { return all_.data() + kGuard; }
  size_t size() const { return size_; }

  // Throws if a guard zone no longer holds the poison: a kernel wrote outside the buffer.
  void check_guards(const std::string& name) const {
    for (size_t i = 0; i < all_.size(); ++i) {
      if (i >= kGuard && i < kGuard + size_) continue;
      if (std::memcmp(&all_[i], &poison_, sizeof(T)) != 0) {
        throw std::runtime_error("write outside " + name + " at element " +
                                 std::to_string(static_cast<int64_t>(i) - static_cast<int64_t>(kGuard)));
      }
    }
  }

 private:
  size_t size_;
  T poison_;
  std::vector<T> all_;
};

template <typename T>
void write_file(const std::string& path, const std::vector<T>& values) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(T)));
}

// Runs `body(args)` with the command line's arguments; an exception is printed and exits 1.
template <typename Body>
int run_main(int argc, char** argv, Body&& body) {
  try {
    body(Args(argc, argv));
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}

}  // namespace emulation
