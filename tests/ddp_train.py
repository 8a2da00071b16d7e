"""Data-parallel training of dlkern-patched models, started the way torch users start it:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_train.py OUT.json

Each process trains two copies of the same models under DistributedDataParallel (gloo): one as
torch wrote it, one patched by dlkern, on its own shard of each batch, for a few SGD steps. Rank 0
writes, per model, the largest difference between the two runs' final parameters, their losses,
and the dlkern ops that ran. tests/test_distributed.py starts this and checks the result.
"""
import copy
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models_check import dlkern_ops_called  # noqa: E402

import dlkern  # noqa: E402
from dlkern.suites.models import GRUEncoder, TransformerLM, UNetCNN, padding_mask  # noqa: E402

STEPS = 5


def batches(name, rank, world):
    """The same global batches in every process; each rank takes its own rows."""
    g = torch.Generator().manual_seed(100)
    out = []
    for _ in range(STEPS):
        if name == "unet":
            x = torch.randn(4, 3, 12, 12, generator=g)
            y = torch.randint(0, 4, (4, 12, 12), generator=g)
            inputs, loss = (x[rank::world],), (lambda out, y=y[rank::world]: F.cross_entropy(out, y))
        elif name == "gru_encoder":
            tokens = torch.randint(0, 50, (6, 8), generator=g)
            lengths = torch.randint(2, 9, (6,), generator=g)
            y = torch.randint(0, 5, (6,), generator=g)
            inputs = (tokens[rank::world], lengths[rank::world])
            loss = lambda out, y=y[rank::world]: F.cross_entropy(out, y)  # noqa: E731
        else:
            tokens = torch.randint(0, 50, (4, 9), generator=g)
            mask = padding_mask(torch.randint(5, 10, (4,), generator=g), 9)
            inputs = (tokens[rank::world], mask[rank::world])
            loss = lambda out, t=tokens[rank::world]: F.cross_entropy(out.flatten(0, 1), t.flatten())  # noqa: E731
        out.append((inputs, loss))
    return out


def train(model, data):
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for inputs, loss_fn in data:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(*inputs))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def main(path):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    builders = {"unet": lambda: UNetCNN(3, 6, 4), "gru_encoder": GRUEncoder,
                "transformer": TransformerLM}
    report = {"world": world, "torch_threads": torch.get_num_threads(), "models": {}}
    for name, build in builders.items():
        torch.manual_seed(0)
        reference = build()
        patched = dlkern.patch(copy.deepcopy(reference))
        data = batches(name, rank, world)
        ref_losses = train(reference, data)
        ran = set()
        losses = None

        def run():
            nonlocal losses
            losses = train(patched, data)
        ran = dlkern_ops_called(run)
        diff = max(float((p - q).detach().abs().max()) for p, q in zip(reference.parameters(),
                                                              patched.parameters()))
        # the replicas of every rank must agree (DDP's all-reduce), for both runs
        mine = torch.cat([p.detach().flatten() for p in patched.parameters()])
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        replica_diff = max(float((g - mine).abs().max()) for g in gathered)
        report["models"][name] = {"max_param_diff": diff, "replica_diff": replica_diff,
                                  "torch_losses": ref_losses, "dlkern_losses": losses,
                                  "dlkern_ops": sorted(ran)}
    if rank == 0:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
