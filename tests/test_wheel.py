"""dlkern as a user installs it: a wheel (not the editable install the tests run on).

The wheel is built from a copy of the packaged sources (pip wheel --no-deps --no-build-isolation),
must hold every .py file under dlkern/ and kernels/ (installed as dlkern.kernels) and the compiled
Cython extension, and is installed into a new virtual environment with --no-deps. That environment
reuses this one's torch, numba, numpy and scipy through a .pth line naming this environment's
site-packages (added after the install; site does not process the .pth files of a directory named
that way, so the editable install of dlkern stays out). From a directory outside the repository,
the installed dlkern must be the wheel's, ``python -m dlkern bench`` must run, and a conv2d must
match torch.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where each source package folder lands in the wheel.
PACKAGE_FOLDERS = {"dlkern": "dlkern", "kernels": "dlkern/kernels"}
# Build leftovers that must not travel with the sources.
_BUILT = shutil.ignore_patterns("__pycache__", "*.so", "*.nbi", "*.nbc", "*.pyd", "*.lock")


def _NOT_SOURCES(folder, names):
    """Build outputs: compiled and cached files, and the C that Cython wrote from a .pyx (the
    hand-written C sources stay)."""
    generated = {n for n in names if n.endswith(".c") and n[:-2] + ".pyx" in names}
    return set(_BUILT(folder, names)) | generated

CHECK = r"""
import os, sys
import torch
import torch.nn.functional as F
import dlkern
import dlkern.functional as DF
from dlkern.kernels.cython import gemm

site = sys.argv[1]
for module in (dlkern, gemm):
    assert os.path.realpath(module.__file__).startswith(os.path.realpath(site)), module.__file__
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, 9, 8, generator=g, requires_grad=True)
w = torch.randn(5, 3, 3, 3, generator=g, requires_grad=True)
y = DF.conv2d(x, w, padding=1)
y.sum().backward()
x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
ref = F.conv2d(x64, w64, padding=1)
ref.sum().backward()
for got, want in ((y, ref), (x.grad, x64.grad), (w.grad, w64.grad)):
    assert (got.double() - want).abs().max().item() < 1e-4
print("wheel ok", dlkern.__file__)
"""


def _source_files():
    """Every .py file of the source packages, as its path inside the wheel."""
    found = set()
    for folder, installed in PACKAGE_FOLDERS.items():
        root = os.path.join(REPO, folder)
        for path, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(path, root)
            for name in files:
                if name.endswith(".py"):
                    found.add(os.path.normpath(os.path.join(installed, rel, name)).replace(os.sep, "/"))
    return found


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _build_wheel(tmp_path):
    src = tmp_path / "src"
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(os.path.join(REPO, folder), src / folder, ignore=_NOT_SOURCES)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(REPO, name), src / name)
    out = tmp_path / "wheel"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(out), str(src)], cwd=tmp_path)
    wheels = list(out.glob("dlkern-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _source_files() - names
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert any(n.startswith("dlkern/kernels/cython/gemm") and n.endswith((".so", ".pyd"))
               for n in names), "the wheel lacks the compiled Cython extension"

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / ("Scripts" if os.name == "nt" else "bin") / "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
          "--no-index", str(wheel)], cwd=tmp_path)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=tmp_path).strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "_dlkern_test_dependencies.pth"), "w") as f:
        f.write("\n".join(sorted(ours)) + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DLKERN_BACKEND")}
    assert "wheel ok" in _run([python, "-c", CHECK, site], cwd=outside, env=env)
    out = _run([python, "-m", "dlkern", "bench", "--suite", "quick", "--op", "conv"], cwd=outside,
               env=env)
    assert "conv" in out
