"""dlkern.nn: drop-in modules, subclasses of their torch twins with identical state_dicts."""
from dlkern.nn.conv import Conv1d, Conv2d, Conv3d

__all__ = ["Conv1d", "Conv2d", "Conv3d"]
from dlkern.nn.conv import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d  # noqa: E402

__all__ += ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
from dlkern.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

__all__ += ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU"]
from dlkern.nn.attention import MultiheadAttention  # noqa: E402

__all__ += ["MultiheadAttention"]
from dlkern.nn.separable import SeparableConv1d, SeparableConv2d, SpatialSeparableConv2d  # noqa: E402

__all__ += ["SeparableConv1d", "SeparableConv2d", "SpatialSeparableConv2d"]
