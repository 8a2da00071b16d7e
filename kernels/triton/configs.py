"""Autotune configurations of every dlkern Triton kernel, as data, in one place.

Each entry is a list of ``triton.Config``; the kernel's ``autotune(..., key=[...])`` names the shape
arguments the choice is keyed on. The first configuration of each list must be valid for every
shape: under ``TRITON_INTERPRET=1`` it is the only one used (see ``_autotune.py``).
Each op family edits only its own block.
"""
from triton import Config

# --- convolution family (conv.py, depthwise.py, separable.py) ---------------------------------
CONV = {
    # -- conv.py: implicit GEMM of the forward and the input gradient [BLOCK_M pixels, BLOCK_N
    # output channels of a group, BLOCK_K input channels (x kernel positions)]. The first tile is
    # valid for every shape and cheap under the interpreter; all fit an H100 in float32. Order is
    # preference: conv.py times at most the first three that fit a shape (_MAX_TUNED).
    "gemm": [
        Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=4),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=4, num_stages=4),
        Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 16}, num_warps=4, num_stages=4),
    ],
    # conv.py, weight gradient [BLOCK_M out channels, BLOCK_N in channels at one kernel
    # position, BLOCK_K of the N * output pixels (split across programs)].
    "weight": [
        Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=4),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    ],
    # conv.py, per-channel sums (bias gradients): [BLOCK_P pixels, BLOCK_C channels] per step;
    # the narrowest serves NCDHW, the widest channels-last (no timing: one is picked by layout).
    "channel_sum": [
        Config({"BLOCK_C": 16, "BLOCK_P": 32}, num_warps=4),
        Config({"BLOCK_C": 64, "BLOCK_P": 64}, num_warps=4),
        Config({"BLOCK_C": 4, "BLOCK_P": 256}, num_warps=4),
    ],
    # -- depthwise.py: direct kernels. channels_last: [BLOCK_P pixels, BLOCK_C channels] tiles,
    # wide in channels (the first, narrow one serves a strided tensor that is neither layout).
    "depthwise_forward": [
        Config({"BLOCK_P": 128, "BLOCK_C": 4}, num_warps=4),
        Config({"BLOCK_P": 16, "BLOCK_C": 64}, num_warps=4),
        Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=4),
    ],
    "depthwise_backward_input": [
        Config({"BLOCK_P": 128, "BLOCK_C": 4}, num_warps=4),
        Config({"BLOCK_P": 16, "BLOCK_C": 64}, num_warps=4),
        Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=4),
    ],
    # NCDHW planes: [BLOCK_H rows, BLOCK_W columns] of one channel's plane per program.
    "depthwise_forward_planes": [
        Config({"BLOCK_H": 8, "BLOCK_W": 32}, num_warps=4),
        Config({"BLOCK_H": 8, "BLOCK_W": 64}, num_warps=4),
        Config({"BLOCK_H": 16, "BLOCK_W": 32}, num_warps=4),
        Config({"BLOCK_H": 64, "BLOCK_W": 8}, num_warps=4),
        Config({"BLOCK_H": 16, "BLOCK_W": 64}, num_warps=8),
    ],
    "depthwise_backward_input_planes": [
        Config({"BLOCK_H": 8, "BLOCK_W": 32}, num_warps=4),
        Config({"BLOCK_H": 8, "BLOCK_W": 64}, num_warps=4),
        Config({"BLOCK_H": 16, "BLOCK_W": 32}, num_warps=4),
        Config({"BLOCK_H": 64, "BLOCK_W": 8}, num_warps=4),
    ],
    # [BLOCK_T taps, BLOCK_P positions]; BLOCK_P must divide 1024 (the launcher's chunk unit).
    "depthwise_backward_weight": [
        Config({"BLOCK_P": 256}, num_warps=4),
        Config({"BLOCK_P": 512}, num_warps=4),
    ],
    # -- separable.py: fused depthwise-separable forward, [BLOCK_M pixels, BLOCK_N out channels],
    # reduction over BLOCK_K depthwise channels computed in registers.
    "dsconv_forward": [
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=2),
    ],
    # separable.py: pointwise weight gradient of depthwise-separable, [BLOCK_M out channels,
    # BLOCK_N depthwise channels (recomputed in registers), BLOCK_K pixels].
    "dsconv_backward_pointwise": [
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=8, num_stages=2),
    ],
    # separable.py: fused spatial separable forward, [MID_W mid columns, BLOCK_N out channels]
    # (MID_W set by the launcher), vertical reduction over BLOCK_CI, horizontal over BLOCK_CM.
    "spatial_forward": [
        Config({"BLOCK_N": 64, "BLOCK_CM": 32, "BLOCK_CI": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_N": 128, "BLOCK_CM": 32, "BLOCK_CI": 32}, num_warps=4, num_stages=2),
        Config({"BLOCK_N": 128, "BLOCK_CM": 64, "BLOCK_CI": 32}, num_warps=8, num_stages=2),
    ],
}

# --- attention (attention.py) -----------------------------------------------------------------
# BLOCK_M tiles queries, BLOCK_N keys; MIN_HEAD/MAX_HEAD bound the padded head width
# (max(BLOCK_D, BLOCK_DV)) a tile is offered for (registers and shared memory). The first entry
# of each list serves every head width: it is the one the interpreter runs (small tiles, so that
# the CPU tests cross several blocks and the causal diagonal); on a GPU the pruning offers it only
# when nothing else fits.
ATTENTION = {
    "forward": [
        Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "MAX_HEAD": 128}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "MAX_HEAD": 128}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 128, "MAX_HEAD": 64}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "MIN_HEAD": 256}, num_warps=8, num_stages=2),
    ],
    "backward_dkdv": [
        Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1),
        Config({"BLOCK_M": 64, "BLOCK_N": 128, "MAX_HEAD": 64}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 32, "BLOCK_N": 128, "MAX_HEAD": 128}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "MAX_HEAD": 128}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 32, "BLOCK_N": 32, "MIN_HEAD": 256}, num_warps=4, num_stages=2),
    ],
    "backward_dq": [
        Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "MAX_HEAD": 64}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 32, "MAX_HEAD": 128}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "MAX_HEAD": 128}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 64, "BLOCK_N": 32, "MIN_HEAD": 256}, num_warps=8, num_stages=2),
    ],
    "softmax": [
        Config({}, num_warps=4),
        Config({}, num_warps=8),
        Config({}, num_warps=16),
    ],
}

# --- recurrent (rnn.py) -----------------------------------------------------------------------
# Time-loop kernels: BLOCK_B batch rows per program (>= 16: tl.dot's smallest M), BLOCK_H hidden
# units per inner block, BLOCK_K the reduction tile of the recurrent product. Each K step loads
# G tiles of W (BLOCK_K x BLOCK_H) per pipeline stage: sizes keep float32 under 227 KiB.
_RNN_LOOP = [
    Config({"BLOCK_B": 16, "BLOCK_H": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2),
    Config({"BLOCK_B": 16, "BLOCK_H": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    Config({"BLOCK_B": 16, "BLOCK_H": 128, "BLOCK_K": 32}, num_warps=8, num_stages=2),
    Config({"BLOCK_B": 32, "BLOCK_H": 64, "BLOCK_K": 64}, num_warps=4, num_stages=2),
]
RNN = {
    "matmul": [
        Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3),
        Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    ],
    # W_hh kept on chip (registers) for H, P <= 64: one tile covers it; the first covers 64.
    "forward_resident": [
        Config({"BLOCK_B": 16, "BLOCK_H": 64, "BLOCK_K": 64}, num_warps=8, num_stages=1),
        Config({"BLOCK_B": 16, "BLOCK_H": 64, "BLOCK_K": 64}, num_warps=4, num_stages=1),
        Config({"BLOCK_B": 16, "BLOCK_H": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1),
        Config({"BLOCK_B": 32, "BLOCK_H": 64, "BLOCK_K": 64}, num_warps=8, num_stages=1),
    ],
    "lstm_forward": _RNN_LOOP,
    "gru_forward": _RNN_LOOP,
    "lstm_backward": _RNN_LOOP,
    "gru_backward": _RNN_LOOP,
    # One launch-bound step: a fixed configuration, no autotuning (its bookkeeping costs more
    # than a step of LSTMCell(128) on a GPU).
    "cell": [Config({"BLOCK_B": 16, "BLOCK_H": 16, "BLOCK_K": 64}, num_warps=4, num_stages=2)],
    "column_sums": [Config({"BLOCK_R": 32, "BLOCK_C": 128}, num_warps=4)],
}
