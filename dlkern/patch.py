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

Selection and policy (dlkern.policy): ``include`` / ``exclude`` name op families or torch classes;
under ``policy="fastest"`` (the default) a swapped module gets the twin's measured subclass, whose
calls run the twin's or torch's own forward, whichever was faster for that call signature; the
containers above are measured the same way (torch's fused fast path against the standard path).
"""
import dataclasses
import threading
import weakref

import torch
import torch.nn.functional as F

from dlkern import _dispatch
from dlkern import nn as dnn
from dlkern import policy as _policy


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
    the class shadows the instance attribute set by torch's constructor; unpatch uncovers it.

    Where torch would have taken the nested path, its output is zero at the padded positions (the
    nested tensor is padded back with zeros before the final norm): the padded output is run on
    the standard path and those positions are zeroed the same way, so the numbers match torch's."""

    @property
    def use_nested_tensor(self):
        return False

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        if not _torch_would_nest(self, src, mask, src_key_padding_mask):
            return super().forward(src, mask, src_key_padding_mask, is_causal)
        from torch.nn.modules.transformer import _detect_is_causal_mask

        kpm = F._canonical_mask(mask=src_key_padding_mask, mask_name="src_key_padding_mask",
                                other_type=None, other_name="", target_type=src.dtype)
        is_causal = _detect_is_causal_mask(None, is_causal, src.shape[1])
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=None, is_causal=is_causal, src_key_padding_mask=kpm)
        output = output.masked_fill((kpm != 0).unsqueeze(-1), 0.0)  # padded: kpm = -inf
        return output if self.norm is None else self.norm(output)


def _torch_would_nest(encoder, src, mask, src_key_padding_mask):
    """Whether torch.nn.TransformerEncoder.forward would convert ``src`` to a nested tensor (the
    conditions of torch 2.x's sparsity fast path, read from the instance's own setting)."""
    first = encoder.layers[0]
    if (src_key_padding_mask is None or mask is not None or src.dim() != 3 or src.is_nested
            or not torch.backends.mha.get_fastpath_enabled()
            or not encoder.__dict__.get("use_nested_tensor", False) or first.training
            or torch.is_autocast_enabled()):
        return False
    kpm = F._canonical_mask(mask=src_key_padding_mask, mask_name="src_key_padding_mask",
                            other_type=None, other_name="", target_type=src.dtype)
    keep = kpm == 0 if kpm.is_floating_point() else kpm.logical_not()
    if getattr(encoder, "mask_check", True):
        if torch.compiler.is_compiling():
            return False
        if not torch._nested_tensor_from_mask_left_aligned(src, keep):
            return False
    attn = first.self_attn
    tensors = (src, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
               attn.out_proj.bias, first.norm1.weight, first.norm1.bias, first.norm2.weight,
               first.norm2.bias, first.linear1.weight, first.linear1.bias, first.linear2.weight,
               first.linear2.bias)
    if torch.overrides.has_torch_function(tensors):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return src.device.type in ("cpu", "cuda", "xpu")


# torch class -> (dlkern twin, op family: the name include/exclude select it by)
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
    torch.nn.RNNCell: (dnn.RNNCell, "cell"),
    torch.nn.LSTMCell: (dnn.LSTMCell, "cell"),
    torch.nn.GRUCell: (dnn.GRUCell, "cell"),
    torch.nn.MultiheadAttention: (dnn.MultiheadAttention, "mha"),
}
# family -> the dlkern._dispatch op family whose kernels it runs, where the names differ
_BACKEND_OP = {"depthwise": "conv", "cell": "rnn", "mha": "attention"}
# family -> other names that also select it ("attention" reaches MultiheadAttention's kernel)
_ALSO_NAMED = {"mha": ("attention",)}
_CONTAINERS = {
    torch.nn.TransformerEncoderLayer: _EncoderLayerStandardPath,
    torch.nn.TransformerEncoder: _EncoderWithoutNested,
}
_MEASURED_CONTAINERS = {_EncoderLayerStandardPath}  # torch's fast path may beat the standard one

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
    if _dispatch.backend_for(_BACKEND_OP.get(family, family), *tensors) is None:
        kinds = sorted({f"{t.dtype} on {t.device}" for t in tensors})
        return f"no dlkern kernel for parameters of {', '.join(kinds)}"
    return None


def _supported_base(module):
    """The torch class of _TWINS that ``module`` subclasses, when it is not exactly that class."""
    for base in _TWINS:
        if isinstance(module, base) and type(module) is not base:
            return base
    return None


def family_of(module, cls=None):
    """The op family of a module of a _TWINS class: a convolution whose groups equal its input
    channels (more than one) is "depthwise"."""
    cls = cls or type(module)
    family = _TWINS[cls][1]
    if family == "conv" and 1 < module.groups == module.in_channels:
        return "depthwise"
    return family


def _tags(module, cls):
    family = family_of(module, cls)
    return {family, cls, *_ALSO_NAMED.get(family, ())}


def patch(model, include=None, exclude=None, policy=None, report=False):
    """Swap, in place, every supported torch submodule of ``model`` (and ``model`` itself) for its
    dlkern twin. ``include`` / ``exclude``: op families (dlkern.policy.FAMILIES) or torch module
    classes to swap / keep; ``policy``: "fastest" (default, or ``DLKERN_POLICY``) or "always".
    Returns ``model``, or ``(model, PatchReport)`` when ``report=True``."""
    selection = _policy.Selection(include, exclude, tuple(_TWINS), "dlkern.patch")
    measured = _policy.resolve(policy) == "fastest"
    if measured:
        _policy.load()  # decisions on disk apply from the first call, traced or not
    result = PatchReport()
    with _lock:
        for name, module in model.named_modules(remove_duplicate=True):
            cls = type(module)
            if cls in _TWINS:
                twin, _ = _TWINS[cls]
                family = family_of(module, cls)
                if not selection.takes(_tags(module, cls)):
                    result.kept.append((name, cls.__name__, "not selected"))
                    continue
                why = _why_not_covered(module, family)
                if why is not None:
                    result.kept.append((name, cls.__name__, why))
                    continue
                _swap(module, cls, twin, family, measured)
                result.patched.append((name, cls.__name__))
            elif isinstance(module, tuple(_TWINS)) and not isinstance(module, tuple(t for t, _ in _TWINS.values())):
                base = _supported_base(module)
                result.kept.append((name, cls.__name__,
                                    f"a subclass of torch.nn.{base.__name__}: its forward may differ"))
        for name, module in model.named_modules(remove_duplicate=True):
            cls = type(module)
            if cls in _CONTAINERS and _attention_patched(module):
                container = _CONTAINERS[cls]
                _swap(module, cls, container, "mha", measured and container in _MEASURED_CONTAINERS)
                result.adjusted.append((name, cls.__name__))
    return (model, result) if report else model


def _swap(module, cls, new_cls, family, measured):
    _original_class[module] = cls
    if measured:
        module._dlkern_policy_key = _policy.module_key(module, family)
        new_cls = _policy.measured_class(new_cls, cls, family)
    module.__class__ = new_cls


def _attention_patched(container):
    return any(isinstance(m, dnn.MultiheadAttention) and m in _original_class
               for m in container.modules())


def unpatch(model):
    """Give every module that ``patch`` swapped its torch class back. Returns ``model``."""
    with _lock:
        for module in model.modules():
            original = _original_class.pop(module, None)
            if original is not None:
                module.__class__ = original
                module.__dict__.pop("_dlkern_policy_key", None)
    return model
