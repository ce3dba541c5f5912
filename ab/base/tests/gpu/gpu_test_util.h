// Helpers shared by the GPU tests (label gpu):
//   * SAGE_SKIP_IF_NO_GPU()      GTEST_SKIP when no usable CUDA device exists,
//                                so a machine without a GPU reports SKIPPED;
//   * SAGE_CUDA_CHECK(expr)      ASSERT that a CUDA call returned cudaSuccess,
//                                printing the call and the CUDA error text;
//   * SAGE_SKIP_IF_NO_KERNEL_IMAGE()  (CUDA sources only) GTEST_SKIP when the
//                                binary has no code for this GPU (its arch is
//                                not in SAGE_CUDA_ARCHS);
//   * sage::test::GpuTest        a fixture that skips without a GPU and
//                                exposes the device's properties;
//                                GpuKernelTest (CUDA sources) also skips when
//                                there is no kernel image for the GPU;
//   * sage::test::DeviceBuffer   an owning cudaMalloc'd array.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

namespace sage::test {

// Why GPU tests cannot run here, or an empty string when a CUDA device is
// usable. Computed once: the answer does not change during a run.
inline const std::string& cuda_unavailable_reason() {
  static const std::string reason = [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // clear the error so later calls start clean
      return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
    }
    if (count == 0) return std::string("cudaGetDeviceCount reports 0 devices");
    return std::string();
  }();
  return reason;
}

inline bool cuda_device_available() { return cuda_unavailable_reason().empty(); }

}  // namespace sage::test

#define SAGE_SKIP_IF_NO_GPU()                                                           \
  do {                                                                                  \
    if (!::sage::test::cuda_device_available()) {                                      \
      GTEST_SKIP() << "no CUDA GPU (" << ::sage::test::cuda_unavailable_reason() << ")"; \
    }                                                                                   \
  } while (0)

#define SAGE_CUDA_CHECK(expr)                                                                    \
  do {                                                                                           \
    const cudaError_t sage_cuda_err_ = (expr);                                                   \
    ASSERT_EQ(sage_cuda_err_, cudaSuccess) << #expr << " failed: " << cudaGetErrorName(sage_cuda_err_) \
                                           << ": " << cudaGetErrorString(sage_cuda_err_);        \
  } while (0)

#if defined(__CUDACC__)
namespace sage::test {
namespace detail {
template <int = 0>
__global__ void noop_kernel() {}
}  // namespace detail

// cudaSuccess when this binary has code for the current GPU; otherwise the
// error a launch reports (cudaErrorNoKernelImageForDevice, ...).
inline cudaError_t kernel_image_status() {
  detail::noop_kernel<><<<1, 1>>>();
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  return err;
}
}  // namespace sage::test

#define SAGE_SKIP_IF_NO_KERNEL_IMAGE()                                                                \
  do {                                                                                                \
    const cudaError_t sage_image_err_ = ::sage::test::kernel_image_status();                          \
    if (sage_image_err_ == cudaErrorNoKernelImageForDevice ||                                         \
        sage_image_err_ == cudaErrorUnsupportedPtxVersion || sage_image_err_ == cudaErrorInvalidPtx) { \
      GTEST_SKIP() << "this test binary has no code for this GPU (" << cudaGetErrorString(sage_image_err_) \
                   << "); add its architecture to SAGE_CUDA_ARCHS";                                   \
    }                                                                                                 \
    SAGE_CUDA_CHECK(sage_image_err_);                                                                 \
  } while (0)
#endif  // __CUDACC__

namespace sage::test {

// A fixture for tests that need a GPU: skips without one, else records the
// current device's properties.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SAGE_SKIP_IF_NO_GPU();
    SAGE_CUDA_CHECK(cudaGetDevice(&device_));
    SAGE_CUDA_CHECK(cudaGetDeviceProperties(&props_, device_));
  }

  // Compute capability as one number: 90 for sm_90, 100 for sm_100.
  int sm() const { return props_.major * 10 + props_.minor; }
  int sm_count() const { return props_.multiProcessorCount; }
  const cudaDeviceProp& props() const { return props_; }
  int device() const { return device_; }  // the current device the test runs on

 private:
  int device_ = 0;
  cudaDeviceProp props_{};
};

// An owning device array of n elements of T (no construction; trivially
// copyable T only). Allocation failure leaves data() == nullptr and status()
// set, so a test can ASSERT on it.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t n) : size_(n) { status_ = cudaMalloc(reinterpret_cast<void**>(&data_), n * sizeof(T)); }
  ~DeviceBuffer() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() const { return data_; }
  std::size_t size() const { return size_; }
  cudaError_t status() const { return status_; }

  cudaError_t zero() { return cudaMemset(data_, 0, size_ * sizeof(T)); }
  cudaError_t copy_from(const std::vector<T>& host) {
    return cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  cudaError_t copy_to(std::vector<T>& host) const {
    host.resize(size_);
    return cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost);
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
  cudaError_t status_ = cudaSuccess;
};

}  // namespace sage::test

#if defined(__CUDACC__)
namespace sage::test {
// GpuTest for CUDA sources that launch kernels: also skips when the binary has
// no code for this GPU. (Defined only in CUDA translation units, so the one
// definition of GpuTest::SetUp stays the same in .cpp and .cu files.)
class GpuKernelTest : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    SAGE_SKIP_IF_NO_KERNEL_IMAGE();
  }
};
}  // namespace sage::test
#endif  // __CUDACC__
