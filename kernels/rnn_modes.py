"""The recurrent cell kinds of dlkern's RNN family, shared by both backends and dlkern.ops.rnn.

``GATES[mode]``: gate blocks per hidden unit in torch's weight layout (w_ih, w_hh of G*H rows):
LSTM i, f, g, o; GRU r, z, n; the vanilla RNN one (h' = act(W_ih x + b_ih + W_hh h + b_hh)).
"""
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
MODES = tuple(GATES)
