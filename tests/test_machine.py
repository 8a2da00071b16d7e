"""kernels/machine.py: the run-time machine facts the kernels size their blocks from."""
from dlkern.kernels import machine


def test_isa_matches_cpu_flags():
    flags = machine._cpu_flags()
    expected = ("avx512" if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
                else "avx2" if {"avx2", "fma"} <= flags else "other")
    assert machine.isa() == expected
    assert machine.vector_bytes() == {"avx512": 64, "avx2": 32, "other": 16}[expected]


def test_cache_sizes_are_plausible():
    caches = machine.cache_bytes()
    assert set(caches) == {"l1d", "l2", "l3"}
    assert 8 * 1024 <= caches["l1d"] < caches["l2"] <= caches["l3"]


def test_parse_size():
    assert machine._parse_size("48K\n") == 48 * 1024
    assert machine._parse_size("2M") == 2 * 1024 ** 2
    assert machine._parse_size("512") == 512


def test_fingerprint_names_isa_and_cores():
    fp = machine.fingerprint()
    assert machine.isa() in fp and f"{machine.core_count()}c" in fp
