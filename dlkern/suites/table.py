"""The row format of the layer tables, and the Case that the benchmark times.

A ``Row`` is data: one distinct layer shape of a real network, named after the module path of its
first occurrence (``resnet50.layer3.0.conv2``), with the op it runs, the op's arguments under
torch's names plus the input's size, the batch size, and how many times the shape occurs in the
network. The tables (``dlkern.suites.conv``, ``depthwise``, ...) are lists of rows and import
nothing but this module; ``dlkern.suites.cases.case(row)`` turns a row into a ``Case``: tensors,
torch's call and dlkern's call, FLOPs and bytes.

Arguments by op (``size`` is the input's spatial size, or the sequence length):

* ``conv1d/2d/3d``: in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
  bias, size, layout ("contiguous" or "channels_last"). The depthwise table uses the same ops
  with groups == in_channels.
* ``conv_transpose1d/2d/3d``: in_channels, out_channels, kernel_size, stride, padding,
  output_padding, bias, size.
* ``depthwise_separable_conv1d/2d``: in_channels, out_channels, kernel_size, stride, padding,
  dilation, size. ``spatial_separable_conv2d``: in_channels, mid_channels, out_channels,
  kernel_size, padding, size.
* ``LSTM``, ``GRU`` (modules): input_size, hidden_size, num_layers, bidirectional, batch_first,
  size (time steps). ``LSTMCell``, ``GRUCell``: input_size, hidden_size (one step).
* ``scaled_dot_product_attention``: heads, kv_heads, q_len, kv_len, head_dim, mask.
  ``masked_softmax``: heads, q_len, kv_len, mask. ``MultiheadAttention`` (module, batch_first):
  embed_dim, num_heads, q_len, kv_len, mask. Masks: "none", "causal", "key_padding" (B, 1, 1, Lk),
  "causal_padding" (B, 1, Lq, Lk), "full" (B, H, Lq, Lk), "causal_2d" (Lq, Lk).
"""
import dataclasses


@dataclasses.dataclass
class Row:
    """One distinct layer shape of a network (see the module docstring for ``args`` by op)."""
    name: str     # network.module.path of the shape's first occurrence
    family: str   # the table: conv, depthwise, separable, conv_transpose, rnn, attention
    op: str       # a dlkern.functional name, or a module name (LSTM, GRU, LSTMCell, ...)
    args: dict
    batch: int
    count: int = 1  # occurrences of this shape in the network (whole-model weighting)

    @property
    def network(self):
        return self.name.split(".", 1)[0]

    def key(self):
        """What makes two rows the same shape: op, batch and arguments."""
        return (self.op, self.batch, tuple(sorted(self.args.items())))


def distinct(rows):
    """Rows in network order, identical shapes of one network merged into the first (counts
    added); the same shape in two networks stays two rows."""
    first = {}
    for row in rows:
        key = (row.network, row.key())
        if key in first:
            first[key].count += row.count
        else:
            first[key] = dataclasses.replace(row, args=dict(row.args))
    return list(first.values())


def tuple_of(value, rank):
    """An int or a sequence as a tuple of ``rank`` ints (torch's _single/_pair/_triple)."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,) * rank


def conv_args(in_channels, out_channels, kernel_size, size, stride=1, padding=0, dilation=1,
              groups=1, bias=True, layout="contiguous"):
    """A conv row's arguments, each per-axis argument a tuple (so equal shapes compare equal)."""
    rank = len(size)
    return dict(in_channels=in_channels, out_channels=out_channels,
                kernel_size=tuple_of(kernel_size, rank), stride=tuple_of(stride, rank),
                padding=tuple_of(padding, rank), dilation=tuple_of(dilation, rank),
                groups=groups, bias=bias, size=tuple(size), layout=layout)


@dataclasses.dataclass
class Case:
    """One timed benchmark: builds its tensors and knows how to run torch and dlkern on them.

    ``build(dtype, requires_grad, device)`` returns ``(args, kwargs)``, fresh tensors; with
    requires_grad every floating-point input is a leaf that needs a gradient; on the meta device
    the tensors carry shapes only. Module-based cases (float32, CPU) list their parameters
    (torch's and dlkern's twin) so forward+backward differentiates them too.
    """
    name: str
    family: str
    build: object
    torch_fn: object
    dlkern_fn: object
    flops: float              # forward floating-point operations
    bytes: float = 0.0        # forward bytes moved at the least: inputs, weights, outputs (float32)
    row: Row = None
    reduction: int = None     # terms summed per output element, if not flops / 2 / output size
    torch_params: tuple = ()
    dlkern_params: tuple = ()
    # Whole-model cases (suites/model_cases.py): zero-argument callables that run one training
    # step (forward, backward, optimizer step) on torch's model and on the patched one.
    train_torch: object = None
    train_dlkern: object = None

    def inputs(self, requires_grad=False, dtype=None, device="cpu"):
        import torch

        return self.build(dtype or torch.float32, requires_grad, device)

    @property
    def count(self):
        return self.row.count if self.row is not None else 1
