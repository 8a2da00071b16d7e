"""Numba's disk cache shared by processes that compile at once (the test suite's xdist workers, DDP
ranks on a cold cache): kernels/numba/_jit.py's locked save keeps every process's entries, each
naming its own signature's code.

Two processes compile two signatures of one cached function at the same moment, with the window
between reading and writing the cache index widened to 1.5 s (Numba's unlocked save then loses
one of the two entries). This process must then load both from the cache and get the right results.
"""
import importlib
import os
import subprocess
import sys
import textwrap

MODULE = textwrap.dedent("""
    from dlkern.kernels.numba._jit import jit


    @jit
    def affine(x):
        return x * 2 + 1
""")

COMPILE = textwrap.dedent("""
    import os, sys, time
    from numba.core import caching
    load_index = caching.IndexDataCacheFile._load_index

    def slow_load_index(self):
        found = load_index(self)
        time.sleep(1.5)
        return found

    caching.IndexDataCacheFile._load_index = slow_load_index
    import kernel
    # Both processes past their imports, then compile together.
    open(f"ready-{sys.argv[1]}", "w").close()
    while not (os.path.exists("ready-int") and os.path.exists("ready-float")):
        time.sleep(0.01)
    kernel.affine(int(2) if sys.argv[1] == "int" else 2.5)
""")


def test_two_processes_compiling_one_function_keep_both_signatures(tmp_path, monkeypatch):
    (tmp_path / "kernel.py").write_text(MODULE)
    # The environment (NUMBA_CACHE_DIR, if set) is this process's: the same cache for all three.
    workers = [subprocess.Popen([sys.executable, "-c", COMPILE, kind], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for kind in ("int", "float")]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out[-3000:]

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kernel", raising=False)
    kernel = importlib.import_module("kernel")
    try:
        assert kernel.affine(2) == 5 and kernel.affine(2.5) == 6.0
        misses = {sig: n for sig, n in kernel.affine.stats.cache_misses.items() if n}
        assert len(kernel.affine.stats.cache_hits) == 2 and not misses, (
            dict(kernel.affine.stats.cache_hits), misses)
    finally:
        sys.modules.pop("kernel", None)


def test_cache_stamp_covers_every_kernel_module(tmp_path):
    """A kernel's cache is stamped with the source of every kernel module, not only its own: a
    change to a callee's module (rnn_math, inlined into rnn's loops) makes rnn's cache stale."""
    import shutil

    from dlkern.kernels.numba import _jit, rnn

    assert rnn._forward_serial._cache._cache_file._source_stamp[1] == _jit._SOURCES
    folder = os.path.dirname(_jit.__file__)
    assert _jit._sources_digest(folder) == _jit._SOURCES
    copy = tmp_path / "numba"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _jit._sources_digest(str(copy)) == _jit._SOURCES
    with open(copy / "rnn_math.py", "a") as handle:
        handle.write("\n# changed\n")
    assert _jit._sources_digest(str(copy)) != _jit._SOURCES
