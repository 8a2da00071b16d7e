"""Autotune configurations of every dlkern Triton kernel, as data, in one place.

Each entry is a list of ``triton.Config``; the kernel's ``autotune(..., key=[...])`` names the shape
arguments the choice is keyed on. The first configuration of each list must be valid for every
shape: under ``TRITON_INTERPRET=1`` it is the only one used (see ``_autotune.py``).
Each op family edits only its own block.
"""
from triton import Config

# --- convolution family (conv.py, depthwise.py, separable.py) ---------------------------------
CONV = {}

# --- attention (attention.py) -----------------------------------------------------------------
ATTENTION = {}

# --- recurrent (rnn.py) -----------------------------------------------------------------------
RNN = {}
