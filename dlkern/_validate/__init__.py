"""Every argument check of dlkern, in one place, raising the exception type torch raises.

Kernels assume valid arguments: nothing reaches them before these checks have passed. Messages
name the argument and the shapes. No ``assert`` (it vanishes under ``python -O``).

One module per op family (conv, attention, rnn) plus the checks they share (common); every public
check is re-exported here, so callers write ``_validate.conv_args(...)``.
"""
from dlkern._validate.attention import masked_softmax_args, mha_args, sdpa_args  # noqa: F401
from dlkern._validate.common import check_tensor, expand_param  # noqa: F401
from dlkern._validate.conv import (conv_args, conv_transpose_args, depthwise_args,  # noqa: F401
                                   depthwise_separable_args, spatial_separable_args)
from dlkern._validate.rnn import (dropout_mode, dropout_probability,  # noqa: F401
                                  rnn_cell_args, rnn_cell_module_args, rnn_flat_args,
                                  rnn_module_args, rnn_module_inputs)
