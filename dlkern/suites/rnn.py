"""Layer table: recurrent layers and cells of real networks (nn.LSTM / nn.GRU modules, one decoder
step of nn.LSTMCell / nn.GRUCell).

* deepspeech2 (B1, 300 steps: 6 s of audio at 20 ms): a DeepSpeech2-style stack of bidirectional
  GRUs, hidden 512, over 32x41 = 1312 conv features; the directions are summed between layers
  (deepspeech.pytorch), so later layers take 512 inputs;
* seq2seq_lstm (B16, 40 tokens): an OpenNMT-style encoder (2 layers, bidirectional, 256 per
  direction, 512-d embeddings) and decoder (2 layers, 512), teacher forcing; its inference step
  as LSTMCells with input feeding (embedding + attention context = 1024 inputs);
* char_rnn (B1, 256 characters, batch_first): a char-level LSTM, 2 layers of 512, 128-d
  embeddings;
* gru_seq2seq (B16, 48 tokens, batch_first): the GRU seq2seq model of the models suite;
* tacotron2 (B1): the decoder's two LSTMCells per mel frame (attention RNN: prenet 256 + context
  512 inputs; decoder RNN: 1024 + 512 inputs), hidden 1024;
* rnnsearch (B16): Bahdanau et al.'s decoder GRUCell (620-d embedding + 2000-d context, hidden
  1000).
"""
from dlkern.suites.table import Row, distinct

FAMILY = "rnn"


def _layer(name, op, batch, steps, input_size, hidden_size, num_layers=1, bidirectional=False,
           batch_first=False, count=1):
    args = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                bidirectional=bidirectional, batch_first=batch_first, size=steps)
    return Row(name, FAMILY, op, args, batch, count)


def _cell(name, op, batch, input_size, hidden_size):
    return Row(name, FAMILY, op, dict(input_size=input_size, hidden_size=hidden_size), batch)


ROWS = distinct([
    _layer("deepspeech2.rnns.0", "GRU", 1, 300, 1312, 512, bidirectional=True),
    _layer("deepspeech2.rnns.1", "GRU", 1, 300, 512, 512, bidirectional=True, count=4),
    _layer("seq2seq_lstm.encoder.rnn", "LSTM", 16, 40, 512, 256, num_layers=2,
           bidirectional=True),
    _layer("seq2seq_lstm.decoder.rnn", "LSTM", 16, 40, 512, 512, num_layers=2),
    _cell("seq2seq_lstm.decoder_step.layers.0", "LSTMCell", 16, 1024, 512),
    _cell("seq2seq_lstm.decoder_step.layers.1", "LSTMCell", 16, 512, 512),
    _layer("char_rnn.lstm", "LSTM", 1, 256, 128, 512, num_layers=2, batch_first=True),
    _layer("gru_seq2seq.encoder", "GRU", 16, 48, 256, 512, num_layers=2, batch_first=True),
    _layer("gru_seq2seq.decoder", "GRU", 16, 48, 256, 512, num_layers=2, batch_first=True),
    _cell("tacotron2.decoder.attention_rnn", "LSTMCell", 1, 768, 1024),
    _cell("tacotron2.decoder.decoder_rnn", "LSTMCell", 1, 1536, 1024),
    _cell("rnnsearch.decoder.gru_cell", "GRUCell", 16, 2620, 1000),
])

QUICK = ("deepspeech2.rnns.1", "seq2seq_lstm.decoder.rnn", "char_rnn.lstm",
         "tacotron2.decoder.decoder_rnn", "rnnsearch.decoder.gru_cell")
