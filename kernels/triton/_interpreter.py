"""Triton's interpreter (``TRITON_INTERPRET=1``: the Triton kernels on CPU tensors) made to work
with the NumPy installed next to it.

Triton 3.6's interpreter turns a runtime scalar into a Python int (a loop bound, ``range(n)``)
with ``int()`` of the scalar's shape-(1,) array, which NumPy >= 2.4 refuses ("only 0-dimensional
arrays can be converted to Python scalars"). ``install`` gives the interpreter's tensors an
``__index__`` that reads the one element instead. It changes nothing unless the interpreter is
active and NumPy is 2.4 or newer, and it runs once per process: ``kernels/triton/__init__.py``
calls it, so it is in place before any dlkern Triton kernel is defined or launched.
"""
import os

_installed = False


def interpreting():
    """True when ``triton.jit`` builds interpreted kernels (it reads TRITON_INTERPRET the same way
    when a kernel is defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _numpy_refuses_int_of_1d():
    import numpy as np

    return np.lib.NumpyVersion(np.__version__) >= "2.4.0"


def install():
    """Apply the NumPy >= 2.4 fix to Triton's interpreter if it is needed; idempotent."""
    global _installed
    if _installed or not interpreting() or not _numpy_refuses_int_of_1d():
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        # The interpreter patches tl.tensor for the duration of one kernel launch (``scope``
        # restores it afterwards); add our __index__ on top of its own.
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_lang_tensor
    _installed = True
