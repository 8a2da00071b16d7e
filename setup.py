"""Build script: compiles the Cython extension and maps the folder kernels/ to dlkern.kernels."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "dlkern.kernels.cython.gemm",
        ["kernels/cython/gemm.pyx"],
        extra_compile_args=["-O3"],
    )
]

setup(
    package_dir={"dlkern": "dlkern", "dlkern.kernels": "kernels"},
    packages=[
        "dlkern",
        "dlkern._validate",
        "dlkern.benchmark",
        "dlkern.ops",
        "dlkern.suites",
        "dlkern.nn",
        "dlkern.kernels",
        "dlkern.kernels.numba",
        "dlkern.kernels.cython",
        "dlkern.kernels.triton",
    ],
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
)
