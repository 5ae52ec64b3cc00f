"""Peak memory over a stretch of work: the most allocated on a CUDA device, or the most
resident in this process on the CPU."""
import resource

import torch


def reset_peak(device: torch.device):
    """Starts the peak that peak_bytes reads. On the CPU it lowers the process's high-water
    mark (VmHWM) to its resident set through Linux's clear_refs (Linux >= 4.0); where that is
    not allowed, or not Linux, the peak stays the process's since it started."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes(device: torch.device) -> int:
    """The most bytes allocated on a CUDA device, or resident on the CPU, since reset_peak. On
    the CPU VmHWM where /proc has it: Linux carries a parent's peak over into a child's
    ru_maxrss across fork/exec, VmHWM starts afresh."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
