"""Bad-input cases of the recurrent family (RNN, LSTM, GRU and their cells), run by
bad_input_battery.py; torch 2.13's exception types (TypeError, ValueError, RuntimeError, the odd
IndexError/AttributeError of its modules) are the specification."""
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import dlkern.functional as DF
import dlkern.nn as dnn


def _pair(name, *args, **kwargs):
    """A torch module and its dlkern twin with the same parameters."""
    ref = getattr(torch.nn, name)(*args, **kwargs)
    mod = getattr(dnn, name)(*args, **kwargs)
    mod.load_state_dict(ref.state_dict())
    return ref, mod


def cases():
    """{name: (torch call, dlkern call)} for LSTM, GRU and their cells."""
    lstm_t, lstm_d = _pair("LSTM", 4, 5)
    gru_t, gru_d = _pair("GRU", 4, 5, num_layers=2, bidirectional=True)
    proj_t, proj_d = _pair("LSTM", 4, 5, proj_size=2)
    lcell_t, lcell_d = _pair("LSTMCell", 4, 5)
    gcell_t, gcell_d = _pair("GRUCell", 4, 5)
    rnn_t, rnn_d = _pair("RNN", 4, 5, nonlinearity="relu", num_layers=2)
    rcell_t, rcell_d = _pair("RNNCell", 4, 5)
    x = torch.randn(3, 2, 4)

    def both(ref, mod, *args):
        return (lambda: ref(*args), lambda: mod(*args))

    w_ih, w_hh = torch.randn(20, 4), torch.randn(20, 5)
    g_ih, g_hh = torch.randn(15, 4), torch.randn(15, 5)
    h, c = torch.randn(3, 5), torch.randn(3, 5)

    def fboth(name, *args):
        return (lambda: getattr(torch, name)(*args), lambda: getattr(DF, name)(*args))

    lengths = torch.tensor([1, 3])
    return {
        "lstm wrong input_size": both(lstm_t, lstm_d, torch.randn(3, 2, 3)),
        "lstm input rank 4": both(lstm_t, lstm_d, torch.randn(3, 2, 2, 4)),
        "lstm input rank 1": both(lstm_t, lstm_d, torch.randn(4)),
        "lstm h0 batch mismatch": both(lstm_t, lstm_d, x, (torch.randn(1, 3, 5), torch.randn(1, 2, 5))),
        "lstm c0 wrong hidden": both(lstm_t, lstm_d, x, (torch.randn(1, 2, 5), torch.randn(1, 2, 4))),
        "lstm h0 wrong layers": both(lstm_t, lstm_d, x, (torch.randn(2, 2, 5), torch.randn(2, 2, 5))),
        "lstm hx 2-D for batched input": both(lstm_t, lstm_d, x, (torch.randn(2, 5), torch.randn(2, 5))),
        "lstm hx 3-D for unbatched input": both(lstm_t, lstm_d, x[:, 0], (torch.randn(1, 2, 5), torch.randn(1, 2, 5))),
        "lstm proj h0 of hidden size": both(proj_t, proj_d, x, (torch.randn(1, 2, 5), torch.randn(1, 2, 5))),
        "lstm proj c0 of proj size": both(proj_t, proj_d, x, (torch.randn(1, 2, 2), torch.randn(1, 2, 2))),
        "lstm hx dtype mismatch": both(lstm_t, lstm_d, x, (torch.randn(1, 2, 5).double(), torch.randn(1, 2, 5))),
        "lstm packed wrong input_size": both(lstm_t, lstm_d, PackedSequence(torch.randn(6, 3), torch.tensor([3, 2, 1]))),
        "lstm packed hx batch mismatch": both(lstm_t, lstm_d, PackedSequence(torch.randn(6, 4), torch.tensor([3, 2, 1])),
                                              (torch.randn(1, 2, 5), torch.randn(1, 2, 5))),
        "unsorted lengths with enforce_sorted": (
            lambda: lstm_t(pack_padded_sequence(x, lengths, enforce_sorted=True)),
            lambda: lstm_d(pack_padded_sequence(x, lengths, enforce_sorted=True))),
        "gru wrong input_size": both(gru_t, gru_d, torch.randn(3, 2, 6)),
        "gru h0 wrong shape": both(gru_t, gru_d, x, torch.randn(4, 3, 5)),
        "gru h0 2-D for batched input": both(gru_t, gru_d, x, torch.randn(4, 5)),
        "gru input rank 4": both(gru_t, gru_d, torch.randn(3, 2, 2, 4)),
        "gru empty sequence": both(gru_t, gru_d, torch.randn(0, 2, 4)),
        "lstm empty sequence batch_first": (lambda: torch.nn.LSTM(4, 5, batch_first=True)(torch.randn(2, 0, 4)),
                                            lambda: dnn.LSTM(4, 5, batch_first=True)(torch.randn(2, 0, 4))),
        "lstm proj_size >= hidden_size": (lambda: torch.nn.LSTM(4, 5, proj_size=5),
                                          lambda: dnn.LSTM(4, 5, proj_size=5)),
        "lstm negative proj_size": (lambda: torch.nn.LSTM(4, 5, proj_size=-1),
                                    lambda: dnn.LSTM(4, 5, proj_size=-1)),
        "gru bad dropout": (lambda: torch.nn.GRU(4, 5, dropout=1.5), lambda: dnn.GRU(4, 5, dropout=1.5)),
        "lstmcell wrong input_size": both(lcell_t, lcell_d, torch.randn(3, 3)),
        "lstmcell input rank 3": both(lcell_t, lcell_d, torch.randn(2, 3, 4)),
        "lstmcell hx batch mismatch": both(lcell_t, lcell_d, torch.randn(3, 4), (torch.randn(2, 5), torch.randn(3, 5))),
        "lstmcell hx wrong hidden": both(lcell_t, lcell_d, torch.randn(3, 4), (torch.randn(3, 4), torch.randn(3, 5))),
        "grucell hx rank 3": both(gcell_t, gcell_d, torch.randn(3, 4), torch.randn(3, 5, 1)),
        "grucell wrong input_size": both(gcell_t, gcell_d, torch.randn(3, 6), torch.randn(3, 5)),
        "grucell hx batch mismatch": both(gcell_t, gcell_d, torch.randn(3, 4), torch.randn(2, 5)),
        "lstm_cell one hidden state": fboth("lstm_cell", torch.randn(3, 4), (h,), w_ih, w_hh),
        "lstm_cell w_ih rows": fboth("lstm_cell", torch.randn(3, 4), (h, c), torch.randn(16, 4), w_hh),
        "lstm_cell w_ih columns": fboth("lstm_cell", torch.randn(3, 3), (h, c), w_ih, w_hh),
        "lstm_cell dtype mismatch": fboth("lstm_cell", torch.randn(3, 4), (h, c), w_ih.double(), w_hh),
        "lstm_cell hx batch": fboth("lstm_cell", torch.randn(2, 4), (h, c), w_ih, w_hh),
        "gru_cell bias size": fboth("gru_cell", torch.randn(3, 4), h, g_ih, g_hh, torch.randn(14)),
        "gru_cell w_hh shape": fboth("gru_cell", torch.randn(3, 4), h, g_ih, torch.randn(15, 4)),
        # argument kinds and dtypes (torch's TypeError / ValueError, not RuntimeError)
        "lstm_cell hx not a tuple": fboth("lstm_cell", torch.randn(3, 4), h, w_ih, w_hh),
        "lstm_cell three states": fboth("lstm_cell", torch.randn(3, 4), (h, c, c), w_ih, w_hh),
        "gru_cell hx a tuple": fboth("gru_cell", torch.randn(3, 4), (h,), g_ih, g_hh),
        "gru_cell hx None": fboth("gru_cell", torch.randn(3, 4), None, g_ih, g_hh),
        "gru_cell input dtype": fboth("gru_cell", torch.randn(3, 4).double(), h, g_ih, g_hh),
        "lstmcell hx not a tuple": both(lcell_t, lcell_d, torch.randn(3, 4), h),
        "lstmcell input dtype": both(lcell_t, lcell_d, torch.randn(3, 4).double()),
        "lstm input dtype": both(lstm_t, lstm_d, x.double()),
        "lstm integer input": both(lstm_t, lstm_d, torch.ones(3, 2, 4, dtype=torch.int64)),
        "gru input dtype": both(gru_t, gru_d, x.double()),
        "lstm hx one tensor": both(lstm_t, lstm_d, x, torch.randn(1, 2, 5)),
        "lstm three states": both(lstm_t, lstm_d, x, (torch.randn(1, 2, 5),) * 3),
        "gru hx a tuple": both(gru_t, gru_d, x, (torch.randn(4, 2, 5),)),
        # the vanilla RNN
        "rnn bad nonlinearity": (lambda: torch.nn.RNN(4, 5, nonlinearity="gelu"),
                                 lambda: dnn.RNN(4, 5, nonlinearity="gelu")),
        "rnn wrong input_size": both(rnn_t, rnn_d, torch.randn(3, 2, 3)),
        "rnn input rank 4": both(rnn_t, rnn_d, torch.randn(3, 2, 2, 4)),
        "rnn h0 wrong layers": both(rnn_t, rnn_d, x, torch.randn(1, 2, 5)),
        "rnn hx dtype": both(rnn_t, rnn_d, x, torch.randn(2, 2, 5).double()),
        "rnn input dtype": both(rnn_t, rnn_d, x.double()),
        "rnn empty sequence": both(rnn_t, rnn_d, torch.randn(0, 2, 4)),
        "rnncell input rank 3": both(rcell_t, rcell_d, torch.randn(2, 3, 4)),
        "rnncell hx rank 3": both(rcell_t, rcell_d, torch.randn(3, 4), torch.randn(1, 3, 5)),
        "rnncell hx batch mismatch": both(rcell_t, rcell_d, torch.randn(3, 4), torch.randn(2, 5)),
        "rnn_tanh_cell w_ih rows": fboth("rnn_tanh_cell", torch.randn(3, 4), h, w_ih, w_hh),
        "rnn_relu_cell input_size": fboth("rnn_relu_cell", torch.randn(3, 3), h, w_ih[:5],
                                          w_hh[:5]),
        "rnn_tanh_cell dtype": fboth("rnn_tanh_cell", torch.randn(3, 4), h.double(), w_ih[:5],
                                     w_hh[:5]),
        # zero-size dimensions: results, not errors, in both
        "lstm batch of 0": both(lstm_t, lstm_d, torch.randn(3, 0, 4)),
        "lstmcell batch of 0": both(lcell_t, lcell_d, torch.randn(0, 4)),
        "gru_cell batch of 0": fboth("gru_cell", torch.randn(0, 4), torch.randn(0, 5), g_ih, g_hh),
    }
