"""dlkern's Triton kernels (GPU; CPU tensors through Triton's interpreter). Importing the package
puts the interpreter's NumPy fix in place when the interpreter is active (see ``_interpreter.py``);
it imports Triton only then."""
from . import _interpreter

_interpreter.install()
