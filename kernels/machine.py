"""What this CPU is, read at run time: instruction set, cache sizes, model name, cores.

Kernels size their blocks from these numbers (never for one machine: the next may be AVX2 with a
512 KiB L2 where this one is AVX-512 with 1-2 MiB), and the benchmark stores them with every
result. Everything is read once per process and cached; nothing here imports torch or Numba.

* ``isa()``: "avx512" (AVX-512 F/BW/VL/DQ), "avx2" (AVX2 + FMA), else "other".
* ``vector_bytes()``: the SIMD register width the kernels should assume (64, 32 or 16).
* ``cache_bytes()``: {"l1d": ..., "l2": ..., "l3": ...} per core for L1d/L2, per package for L3,
  from sysfs (Linux), falling back to conservative defaults (32 KiB / 512 KiB / 8 MiB) elsewhere.
* ``cpu_model()``, ``core_count()`` (the cores this process may run on).
* ``fingerprint()``: a short string naming the machine for caches of timed choices.
"""
import functools
import os
import platform

_DEFAULT_CACHES = {"l1d": 32 * 1024, "l2": 512 * 1024, "l3": 8 * 1024 * 1024}


@functools.lru_cache(maxsize=None)
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def isa():
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "other"


def vector_bytes():
    return {"avx512": 64, "avx2": 32}.get(isa(), 16)


def _parse_size(text):
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    return int(digits) * scale


@functools.lru_cache(maxsize=None)
def cache_bytes():
    """Cache sizes in bytes as seen by one core of this process (sysfs, cpu0)."""
    found = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(e for e in os.listdir(base) if e.startswith("index"))
    except OSError:
        entries = []
    for entry in entries:
        try:
            with open(f"{base}/{entry}/level") as f:
                level = int(f.read())
            with open(f"{base}/{entry}/type") as f:
                kind = f.read().strip()
            with open(f"{base}/{entry}/size") as f:
                size = _parse_size(f.read())
        except (OSError, ValueError):
            continue
        if level == 1 and kind == "Data":
            found["l1d"] = size
        elif level in (2, 3) and kind == "Unified":
            found[f"l{level}"] = size
    return {key: found.get(key, default) for key, default in _DEFAULT_CACHES.items()}


@functools.lru_cache(maxsize=None)
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def core_count():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fingerprint():
    """Model, ISA, cores and cache sizes in one string: a key for choices timed on this machine."""
    caches = cache_bytes()
    return (f"{cpu_model()}|{isa()}|{core_count()}c|l1d{caches['l1d']}|l2{caches['l2']}"
            f"|l3{caches['l3']}")
