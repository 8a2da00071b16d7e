"""Build script: compiles the Cython extension and maps the folder kernels/ to dlkern.kernels.

Packages are found, not listed: every folder with an ``__init__.py`` under dlkern/ and kernels/ is
in the wheel (tests/test_wheel.py checks the wheel against the source tree).
"""
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup


def packages_under(folder, name):
    """``name`` and every package below ``folder``, named as installed under ``name``."""
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


extensions = [
    Extension(
        "dlkern.kernels.cython.gemm",
        ["kernels/cython/gemm.pyx", "kernels/cython/packed_gemm.c"],
        include_dirs=["kernels/cython"],
        depends=["kernels/cython/packed_gemm.h", "kernels/cython/packed_gemm_impl.h"],
        extra_compile_args=["-O3"],
    )
]

setup(
    package_dir={"dlkern": "dlkern", "dlkern.kernels": "kernels"},
    packages=packages_under("dlkern", "dlkern") + packages_under("kernels", "dlkern.kernels"),
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
)
