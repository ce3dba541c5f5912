"""The few NVML queries the benchmark and scripts/energy_per_call.py make, through ctypes on the
driver's own library (libnvidia-ml.so.1): no Python package needed.

Why the benchmark asks: on a board held at its power limit (an H100 SXM at 700 W), the driver lowers
the SM clock of whichever method draws more power per call, in steps that come and go over a run, so
one run's time ratio mixes the kernels' speed with the power state each method was caught in. The
benchmark records the SM clock sampled beside every timed call and the time the driver spent
capping power over each shape. (Session 71: at 4K keys the samples read within 3% for both methods,
often the top clock, while the driver counted ~200-300 ms of capping over the shape, so one sample a
call misses short capping; the samples part only where a method is held down for long, as at 16K.)
"""
from __future__ import annotations

import ctypes

NVML_CLOCK_SM = 1
# nvmlPerfPolicyType_t: the violation counters read here (their times are in ns).
NVML_PERF_POLICY_POWER = 0
NVML_PERF_POLICY_THERMAL = 1


class ViolationTime(ctypes.Structure):
    _fields_ = [("referenceTime", ctypes.c_ulonglong), ("violationTime", ctypes.c_ulonglong)]


class Nvml:
    """NVML on the GPU of a single-GPU machine. NVML orders GPUs by PCI bus and CUDA by speed or by
    CUDA_VISIBLE_DEVICES, so where several are present, which NVML device a CUDA device is would
    take their bus IDs; rather than read another GPU's clock, this refuses there."""

    def __init__(self, cuda_devices):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        self._check(self.lib.nvmlInit_v2())
        count = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)))
        if count.value != 1 or cuda_devices != 1:
            raise RuntimeError(f"NVML sees {count.value} GPUs and CUDA {cuda_devices}; only a single GPU is read")
        self.handle = ctypes.c_void_p()
        self._check(self.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.handle)))

    @classmethod
    def open_or_none(cls, cuda_devices):
        """Nvml(cuda_devices), or None with the reason printed where the driver's library is missing
        or refuses, or where more than one GPU is present."""
        try:
            return cls(cuda_devices)
        except (OSError, RuntimeError) as e:
            print(f"NVML unavailable ({e}): no clocks or power-capping time recorded")
            return None

    @staticmethod
    def _check(rc):
        if rc != 0:
            raise RuntimeError(f"NVML call failed with status {rc}")

    def energy_mj(self):
        value = ctypes.c_ulonglong()
        self._check(self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(value)))
        return value.value

    def sm_clock_mhz(self):
        value = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetClockInfo(self.handle, NVML_CLOCK_SM, ctypes.byref(value)))
        return value.value

    def violation_ns(self, policy):
        value = ViolationTime()
        self._check(self.lib.nvmlDeviceGetViolationStatus(self.handle, policy, ctypes.byref(value)))
        return value.violationTime
