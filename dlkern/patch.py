"""``dlkern.patch(model)`` and ``dlkern.unpatch(model)``: swap a whole model's supported torch
submodules for their dlkern twins, in place, and back.

Every dlkern.nn twin is a subclass of its torch module that adds no state of its own, so the swap is
a change of the instance's class: the module keeps the very same Parameter and buffer objects (an
optimizer built before the patch keeps working), its hooks, training mode, device and dtype, and
its place in the parent. Only modules whose class is exactly a torch class dlkern covers are
swapped; a user's subclass (which may override ``forward``) is left alone and reported.

Two torch containers bypass ``MultiheadAttention.forward`` in inference: TransformerEncoderLayer's
fused "fast path" and TransformerEncoder's nested-tensor conversion. Where their attention was
patched, they get private subclasses that take torch's standard path, so the patched attention
actually runs (the same numbers, computed by dlkern); unpatch restores them.
"""
import dataclasses
import threading
import weakref

import torch
import torch.nn.functional as F

from dlkern import _dispatch
from dlkern import nn as dnn


class _EncoderLayerStandardPath(torch.nn.TransformerEncoderLayer):
    """torch.nn.TransformerEncoderLayer without the fused inference fast path, which would compute
    attention inside one torch kernel instead of calling the (patched) self_attn."""

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        src_key_padding_mask = F._canonical_mask(
            mask=src_key_padding_mask, mask_name="src_key_padding_mask",
            other_type=F._none_or_dtype(src_mask), other_name="src_mask", target_type=src.dtype)
        src_mask = F._canonical_mask(mask=src_mask, mask_name="src_mask", other_type=None,
                                     other_name="", target_type=src.dtype, check_other=False)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class _EncoderWithoutNested(torch.nn.TransformerEncoder):
    """torch.nn.TransformerEncoder that never converts its input to a nested tensor (its inference
    fast path with a key padding mask), which the patched layers would not accept. A property on
    the class shadows the instance attribute set by torch's constructor; unpatch uncovers it."""

    @property
    def use_nested_tensor(self):
        return False


# torch class -> (dlkern twin, op family whose kernels it runs)
_TWINS = {
    torch.nn.Conv1d: (dnn.Conv1d, "conv"),
    torch.nn.Conv2d: (dnn.Conv2d, "conv"),
    torch.nn.Conv3d: (dnn.Conv3d, "conv"),
    torch.nn.ConvTranspose1d: (dnn.ConvTranspose1d, "conv_transpose"),
    torch.nn.ConvTranspose2d: (dnn.ConvTranspose2d, "conv_transpose"),
    torch.nn.ConvTranspose3d: (dnn.ConvTranspose3d, "conv_transpose"),
    torch.nn.RNN: (dnn.RNN, "rnn"),
    torch.nn.LSTM: (dnn.LSTM, "rnn"),
    torch.nn.GRU: (dnn.GRU, "rnn"),
    torch.nn.RNNCell: (dnn.RNNCell, "rnn"),
    torch.nn.LSTMCell: (dnn.LSTMCell, "rnn"),
    torch.nn.GRUCell: (dnn.GRUCell, "rnn"),
    torch.nn.MultiheadAttention: (dnn.MultiheadAttention, "attention"),
}
_CONTAINERS = {
    torch.nn.TransformerEncoderLayer: _EncoderLayerStandardPath,
    torch.nn.TransformerEncoder: _EncoderWithoutNested,
}

# module -> its class before patch: only what patch swapped is swapped back
_original_class = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclasses.dataclass
class PatchReport:
    """What ``patch`` did: ``patched`` and ``kept`` are lists of (qualified name, class name[, why])."""
    patched: list = dataclasses.field(default_factory=list)
    kept: list = dataclasses.field(default_factory=list)
    adjusted: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"dlkern.patch: {len(self.patched)} module(s) now run on dlkern kernels"]
        lines += [f"  {name or '<root>'}: {cls}" for name, cls in self.patched]
        if self.adjusted:
            lines.append("containers switched to torch's standard path (so the patched attention runs):")
            lines += [f"  {name or '<root>'}: {cls}" for name, cls in self.adjusted]
        if self.kept:
            lines.append("kept as torch's:")
            lines += [f"  {name or '<root>'}: {cls} ({why})" for name, cls, why in self.kept]
        return "\n".join(lines)


def _why_not_covered(module, family):
    """None when dlkern has kernels for this module's parameters, else the reason."""
    tensors = list(module.parameters(recurse=False))
    if not tensors:
        return None
    if _dispatch.backend_for(family, *tensors) is None:
        kinds = sorted({f"{t.dtype} on {t.device}" for t in tensors})
        return f"no dlkern kernel for parameters of {', '.join(kinds)}"
    return None


def _supported_base(module):
    """The torch class of _TWINS that ``module`` subclasses, when it is not exactly that class."""
    for base in _TWINS:
        if isinstance(module, base) and type(module) is not base:
            return base
    return None


def patch(model, report=False):
    """Swap, in place, every supported torch submodule of ``model`` (and ``model`` itself) for its
    dlkern twin. Returns ``model``, or ``(model, PatchReport)`` when ``report=True``."""
    result = PatchReport()
    with _lock:
        for name, module in model.named_modules(remove_duplicate=True):
            cls = type(module)
            if cls in _TWINS:
                twin, family = _TWINS[cls]
                why = _why_not_covered(module, family)
                if why is not None:
                    result.kept.append((name, cls.__name__, why))
                    continue
                _original_class[module] = cls
                module.__class__ = twin
                result.patched.append((name, cls.__name__))
            elif isinstance(module, tuple(_TWINS)) and not isinstance(module, tuple(t for t, _ in _TWINS.values())):
                base = _supported_base(module)
                result.kept.append((name, cls.__name__,
                                    f"a subclass of torch.nn.{base.__name__}: its forward may differ"))
        for name, module in model.named_modules(remove_duplicate=True):
            cls = type(module)
            if cls in _CONTAINERS and _attention_patched(module):
                _original_class[module] = cls
                module.__class__ = _CONTAINERS[cls]
                result.adjusted.append((name, cls.__name__))
    return (model, result) if report else model


def _attention_patched(container):
    return any(type(m) is dnn.MultiheadAttention and m in _original_class
               for m in container.modules())


def unpatch(model):
    """Give every module that ``patch`` swapped its torch class back. Returns ``model``."""
    with _lock:
        for module in model.modules():
            original = _original_class.pop(module, None)
            if original is not None:
                module.__class__ = original
    return model


def is_patched(module):
    """True when ``patch`` swapped this module's class."""
    return module in _original_class
