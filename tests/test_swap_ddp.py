"""A swapped model under DistributedDataParallel (two CPU processes, gloo on loopback) trains step for
step like the unswapped one: same losses, same parameters after every step, both ranks in sync."""
import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from tests.helpers import assert_close

timm = pytest.importorskip("timm")

STEPS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build():
    from timm.layers import EcaModule
    from timm.models.resnet import BasicBlock, ResNet

    from attn_kernels.swap import randomize_norms

    torch.manual_seed(0)
    model = nn.Sequential(
        ResNet(BasicBlock, (1, 1, 1, 1), channels=(8, 8, 16, 16), stem_width=8, num_classes=6,
               block_args=dict(attn_layer="se")),
    )
    model[0].layer1.add_module("eca", EcaModule(8))  # a second form, outside a residual block
    return randomize_norms(model).double()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import attn_kernels as ak

        base = _build()
        swapped = copy.deepcopy(base)
        report = ak.swap(swapped, backend="reference", fuse_residual=True)
        kinds = report.kinds()
        ddp = {name: nn.parallel.DistributedDataParallel(m) for name, m in (("base", base), ("swapped", swapped))}
        opts = {name: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for name, m in ddp.items()}
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
        losses = {"base": [], "swapped": []}
        params = {"base": [], "swapped": []}
        for _ in range(STEPS):
            x = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
            y = torch.randint(0, 6, (4,), generator=gen)
            for name, m in ddp.items():
                m.train()
                opts[name].zero_grad()
                loss = nn.functional.cross_entropy(m(x), y)
                loss.backward()
                opts[name].step()
                losses[name].append(loss.item())
                params[name].append([p.detach().clone() for p in m.module.parameters()])
        torch.save({"kinds": kinds, "losses": losses, "params": params,
                    "state_keys_equal": list(base.state_dict()) == list(swapped.state_dict())},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_swapped_model_trains_like_the_original_under_ddp(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for res in results:
        assert res["kinds"] == {"se": 4, "eca": 1, "se_residual": 4}, res["kinds"]
        assert res["state_keys_equal"]
        for step in range(STEPS):
            base_loss, swapped_loss = res["losses"]["base"][step], res["losses"]["swapped"][step]
            assert abs(base_loss - swapped_loss) <= 1e-10 * max(1.0, abs(base_loss)), (step, base_loss, swapped_loss)
            for pb, ps in zip(res["params"]["base"][step], res["params"]["swapped"][step]):
                assert_close(ps, pb, name=f"step {step} parameter")
    # DDP keeps the ranks' replicas identical, swapped or not
    for pa, pb in zip(results[0]["params"]["swapped"][-1], results[1]["params"]["swapped"][-1]):
        assert_close(pa, pb, atol=0, rtol=0, name="rank 0 vs rank 1 parameter")
    # and the model did train (the losses move)
    assert results[0]["losses"]["swapped"][0] != results[0]["losses"]["swapped"][-1]
