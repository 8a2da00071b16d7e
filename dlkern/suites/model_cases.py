"""The models suite: whole models of dlkern.suites.models, torch as written vs the same model after
``dlkern.patch`` (same parameter values), float32, random initialisation.

Modes: ``fwd`` is inference (eval mode, no_grad); ``train`` is one training step (forward, loss,
backward, SGD update) in train mode. Each entry of ``MODELS`` builds its Case only when asked
(models are large). FLOPs are counted by torch's FlopCounterMode on the inference forward.
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
        return torch.autograd.grad(self.loss(model(*self.example), self.example), params)


def model_pair(model):
    """``model`` and a deep copy of it patched by dlkern (same parameter values)."""
    import dlkern

    return model, dlkern.patch(copy.deepcopy(model))


def _count_flops(model, inputs):
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
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
                     _inference(reference), _inference(patched), flops, fwd_bwd=False,
                     train_torch=_train_step(reference, inputs, loss),
                     train_dlkern=_train_step(patched, inputs, loss),
                     torch_model=reference, dlkern_model=patched, loss=loss, example=inputs)


@dataclasses.dataclass
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


def _unet_cnn():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 96, 96, generator=g)
    labels = torch.randint(0, 4, (8, 96, 96), generator=g)
    return model_case("unet_cnn (separable blocks) B8 3x96x96 base32", lambda: models.UNetCNN(3, 32, 4),
                      lambda: (x,), lambda out, inp: F.cross_entropy(out, labels))


def _gru_encoder():
    g = torch.Generator().manual_seed(2)
    batch, length = 32, 64
    tokens = _tokens(batch, length, 1000, 2)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    lengths[0] = length
    labels = torch.randint(0, 10, (batch,), generator=g)
    return model_case("gru_encoder B32 T<=64 E128 H256 L2 packed",
                      lambda: models.GRUEncoder(1000, 128, 256, 10, 2), lambda: (tokens, lengths),
                      lambda out, inp: F.cross_entropy(out, labels))


def _transformer_lm():
    tokens = _tokens(8, 128, 1000, 3)
    return model_case("transformer_lm causal B8 L128 d256 h8 ff1024 L2",
                      lambda: models.TransformerLM(1000, 256, 8, 1024, 2, dropout=0.0),
                      lambda: (tokens,),
                      lambda out, inp: F.cross_entropy(out.flatten(0, 1), inp[0].flatten()))


MODELS = [ModelSpec("unet_cnn", _unet_cnn), ModelSpec("gru_encoder", _gru_encoder),
          ModelSpec("transformer_lm", _transformer_lm)]
