"""The models suite: whole models of dlkern.suites.models, torch as written vs the same model after
``dlkern.patch`` (same parameter values), float32, random initialisation. patch runs with its
default policy ("fastest": per call signature, whichever of dlkern and torch was measured faster
on this machine) unless DLKERN_POLICY says otherwise (``python -m dlkern bench --policy``).

Modes: ``fwd`` is inference (eval mode, no_grad; torch's models take torch's own inference fast
paths, as a user's would); ``train`` is one training step (forward, loss, backward, SGD update) in
train mode. Each entry of ``MODELS`` builds its Case only when asked (models are large). The
agreement check compares the inference output and one step's parameter gradients.
"""
import copy
import dataclasses

import torch
import torch.nn.functional as F

from dlkern.suites import models
from dlkern.suites.table import Case

FAMILY = "models"


@dataclasses.dataclass
class ModelCase(Case):
    """A Case over a whole model; ``train_grads(model)`` is one forward+backward's parameter
    gradients (for the agreement check of the training step)."""
    torch_model: object = None
    dlkern_model: object = None
    loss: object = None       # (model output, inputs) -> scalar loss
    example: tuple = ()

    def train_grads(self, model):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same dropout masks for both models
            loss = self.loss(model(*self.example), self.example)
        return torch.autograd.grad(loss, params)


def model_pair(model):
    """``model`` and a deep copy of it patched by dlkern (same parameter values)."""
    import dlkern

    return model, dlkern.patch(copy.deepcopy(model))


def _count_flops(model, inputs):
    """Forward FLOPs (FlopCounterMode counts torch's matmuls and convolutions, RNNs included).
    Counted on a copy in train mode: the inference fast path of nn.TransformerEncoder runs fused
    kernels that the counter does not see, and train-mode batch norm updates its statistics."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).train()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return float(counter.get_total_flops())


def _inference(model):
    def run(*inputs):
        model.eval()
        return model(*inputs)
    return run


def _train_step(model, inputs, loss):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss(model(*inputs), inputs).backward()
        optimizer.step()
    return step


def model_case(name, build_model, build_inputs, loss):
    """The ModelCase of a model: torch's copy and the patched one, inputs, loss."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference, patched = model_pair(build_model())
        inputs = build_inputs()
    flops = _count_flops(reference, inputs)
    return ModelCase(name, FAMILY, lambda dtype, requires_grad, device="cpu": (inputs, {}),
                     _inference(reference), _inference(patched), flops,
                     train_torch=_train_step(reference, inputs, loss),
                     train_dlkern=_train_step(patched, inputs, loss),
                     torch_model=reference, dlkern_model=patched, loss=loss, example=inputs)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """An entry of the models suite: its name and how to build its Case."""
    name: str
    make: object
    family: str = FAMILY

    def build(self):
        return self.make()


def _tokens(batch, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def _images(batch, size, seed, channels=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g)


def _classify(classes, batch, seed):
    labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))
    return lambda out, inputs: F.cross_entropy(out, labels)


def _mobilenet_v2(batch=8, size=224):
    return model_case("mobilenet_v2", models.MobileNetV2, lambda: (_images(batch, size, 1),),
                      _classify(1000, batch, 1))


def _resnet18(batch=8, size=224):
    return model_case("resnet18", models.ResNet18, lambda: (_images(batch, size, 2),),
                      _classify(1000, batch, 2))


def _convnext_tiny(batch=4, size=224):
    return model_case("convnext_tiny", models.ConvNeXt, lambda: (_images(batch, size, 3),),
                      _classify(1000, batch, 3))


def _unet(batch=1, size=128, base=32):
    labels = torch.randint(0, 2, (batch, size, size), generator=torch.Generator().manual_seed(4))
    return model_case("unet", lambda: models.UNet(3, 2, base), lambda: (_images(batch, size, 4),),
                      lambda out, inputs: F.cross_entropy(out, labels))


def _conformer(batch=8, frames=250, d_model=256):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, frames, d_model, generator=g)
    lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=g)
    lengths[0] = frames
    target = torch.randn(batch, frames, d_model, generator=g)
    return model_case("conformer", lambda: models.ConformerBlock(d_model),
                      lambda: (x, models.padding_mask(lengths, frames)),
                      lambda out, inputs: F.mse_loss(out, target))


def _gru_seq2seq(batch=16, length=48, vocab=1000):
    source, target = _tokens(batch, length, vocab, 6), _tokens(batch, length + 1, vocab, 7)
    return model_case("gru_seq2seq", lambda: models.GRUSeq2Seq(vocab),
                      lambda: (source, target[:, :-1]),
                      lambda out, inputs: F.cross_entropy(out.flatten(0, 1),
                                                          target[:, 1:].flatten()))


def _gpt_small(batch=8, length=256, vocab=1000):
    tokens = _tokens(batch, length, vocab, 8)
    lengths = torch.randint(length // 2, length + 1, (batch,),
                            generator=torch.Generator().manual_seed(8))
    lengths[0] = length
    return model_case("gpt_small", lambda: models.TransformerLM(vocab, 256, 4, 1024, 4),
                      lambda: (tokens, models.padding_mask(lengths, length)),
                      lambda out, inputs: F.cross_entropy(out.flatten(0, 1), inputs[0].flatten()))


# name, builder, what it runs (for the docs and --list)
MODELS = [
    ModelSpec("mobilenet_v2", _mobilenet_v2),      # B8 3x224x224, 1000 classes
    ModelSpec("resnet18", _resnet18),              # B8 3x224x224
    ModelSpec("convnext_tiny", _convnext_tiny),    # B4 3x224x224, ConvNeXt-T stages 3-3-9-3
    ModelSpec("unet", _unet),                      # B1 3x128x128, 32 base channels, 2 classes
    ModelSpec("conformer", _conformer),            # B8 250 frames, d256, 4 heads, kernel 31
    ModelSpec("gru_seq2seq", _gru_seq2seq),        # B16 48 tokens, GRU 256->512 x2 each side
    ModelSpec("gpt_small", _gpt_small),            # B8 256 tokens, d256, 4 heads, 4 layers
]
