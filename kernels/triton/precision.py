"""The one precision policy of dlkern's Triton kernels: the ``input_precision`` of ``tl.dot``.

* float16 / bfloat16 operands are multiplied as they are and accumulate in float32 ("ieee" is
  what tl.dot is given; TF32 has no meaning for them).
* float32 operands use TF32 exactly when torch would for the op's twin on a GPU, and full
  precision otherwise:

  ============================================  ==========================================
  dlkern op                                     torch switch it follows (``follows``)
  ============================================  ==========================================
  conv, conv_transpose, depthwise, separable,   ``torch.backends.cudnn.allow_tf32`` (cuDNN)
  RNN/LSTM/GRU layers                           ``CUDNN``
  scaled_dot_product_attention, RNN cells       ``torch.backends.cuda.matmul.allow_tf32``
                                                (cuBLAS matmuls) ``MATMUL``
  ============================================  ==========================================

* Never TF32 under the interpreter (CPU tensors): the tests compare float32 results there
  against float64 at full-precision tolerances.

Every launcher asks ``dot_precision``; nothing else reads the switches. Importing this module does
not import Triton.
"""
import torch

CUDNN = "cudnn"
MATMUL = "matmul"


def dot_precision(tensor, follows):
    """"tf32" or "ieee" for a tl.dot on operands of ``tensor``'s dtype and device; ``follows`` is
    CUDNN or MATMUL, the torch switch of the op's twin (table above)."""
    if tensor.dtype != torch.float32 or tensor.device.type != "cuda":
        return "ieee"
    if follows == CUDNN:
        allowed = torch.backends.cudnn.allow_tf32
    elif follows == MATMUL:
        allowed = torch.backends.cuda.matmul.allow_tf32
    else:
        raise ValueError(f"dot_precision: follows must be {CUDNN!r} or {MATMUL!r}, got {follows!r}")
    return "tf32" if allowed else "ieee"
