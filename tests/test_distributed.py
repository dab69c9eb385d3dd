"""utils.distributed: the batch sampler, setup from the torchrun environment, and CPU SyncBatchNorm.

The sampler is rank-independent; SyncBatchNorm is checked against plain BatchNorm on the concatenated batch
in a real 2-process gloo group."""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from utils.distributed import (
    CPUSyncBatchNorm,
    DistInfo,
    GlobalBatchSampler,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    convert_sync_bn,
    setup_distributed,
)

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in DIST_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- sampler


def all_ranks(n: int, bs: int, world: int, epoch: int = 0, **kw) -> list[list[list[int]]]:
    """Per global batch, the list of every rank's slice."""
    per_rank = []
    for rank in range(world):
        s = GlobalBatchSampler(n, bs, world_size=world, rank=rank, **kw)
        s.set_epoch(epoch)
        per_rank.append(list(s))
    return [list(slices) for slices in zip(*per_rank)]


@pytest.mark.parametrize("n,bs", [(16, 4), (17, 4), (23, 8), (10, 10)])
def test_global_batches_do_not_depend_on_world_size(n: int, bs: int) -> None:
    single = [b[0] for b in all_ranks(n, bs, 1, epoch=3, seed=7)]
    assert sum(len(b) for b in single) == n and sorted(i for b in single for i in b) == list(range(n))
    assert len(single) == -(-n // bs) and all(len(b) == bs for b in single[:-1])
    for world in (2, 3):
        if n % bs and n % bs < world:
            continue
        batches = all_ranks(n, bs, world, epoch=3, seed=7)
        assert [sum(slices, []) for slices in batches] == single  # contiguous slices, in rank order
        for slices in batches:
            sizes = [len(s) for s in slices]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_permutation_is_a_pure_function_of_seed_and_epoch() -> None:
    a = all_ranks(32, 4, 1, epoch=1, seed=0)
    assert a == all_ranks(32, 4, 1, epoch=1, seed=0)
    assert a != all_ranks(32, 4, 1, epoch=2, seed=0)
    assert a != all_ranks(32, 4, 1, epoch=1, seed=1)
    ordered = all_ranks(8, 3, 1, shuffle=False)
    assert [b[0] for b in ordered] == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_set_start_skips_once_and_len_counts_all_batches() -> None:
    s = GlobalBatchSampler(20, 4, world_size=2, rank=1, seed=5)
    s.set_epoch(2)
    full = list(s)
    assert len(s) == 5 and len(full) == 5
    s.set_start(3)
    s.set_epoch(2)  # the trainer sets the epoch after restoring the position: the skip must survive it
    assert list(s) == full[3:]
    assert list(s) == full  # one-shot
    with pytest.raises(ValueError, match="outside"):
        s.set_start(6)


def test_rect_batches_are_kept_in_order_and_split_per_rank() -> None:
    rect = [[4, 5, 6], [0, 1, 2, 3], [7, 8]]
    assert list(GlobalBatchSampler(9, 4, batches=rect)) == rect
    r0 = list(GlobalBatchSampler(9, 4, world_size=2, rank=0, batches=rect, shuffle=True))
    r1 = list(GlobalBatchSampler(9, 4, world_size=2, rank=1, batches=rect, shuffle=True))
    assert r0 == [[4, 5], [0, 1], [7]] and r1 == [[6], [2, 3], [8]]
    assert len(GlobalBatchSampler(9, 4, batches=rect)) == 3


def test_sampler_rejects_batches_smaller_than_world() -> None:
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        GlobalBatchSampler(17, 8, world_size=4)  # last global batch: 1 image
    with pytest.raises(ValueError, match="fewer than the 2 ranks"):
        GlobalBatchSampler(9, 4, world_size=2, batches=[[0, 1, 2, 3], [4], [5, 6, 7, 8]])
    with pytest.raises(ValueError, match="empty"):
        GlobalBatchSampler(0, 4)
    with pytest.raises(ValueError, match="indices in 0..8"):
        GlobalBatchSampler(9, 4, batches=[[0, 9]])


def test_sampler_drives_a_dataloader() -> None:
    data = torch.arange(10).float()
    sampler = GlobalBatchSampler(10, 4, seed=1)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    assert len(loader) == 3
    assert sorted(torch.cat(list(loader)).long().tolist()) == list(range(10))


# ---------------------------------------------------------------- single process


def test_single_process_setup_and_helpers_are_no_ops(clean_env: pytest.MonkeyPatch) -> None:
    info, device = setup_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.distributed and device == torch.device("cpu")
    t = torch.ones(3)
    assert all_reduce_sum(t, info) is t and t.tolist() == [1, 1, 1]
    counts = [(1, 2, 3), (4, 5, 6)]
    assert all_reduce_sum(counts, info) == counts
    assert broadcast_object({"a": 1}, info) == {"a": 1}
    barrier(info)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert convert_sync_bn(model, info) is model and type(model[1]) is nn.BatchNorm2d
    cleanup_distributed(info)


def test_dist_info_validates() -> None:
    assert DistInfo(rank=1, local_rank=0, world_size=2, backend="gloo").is_main is False
    assert DistInfo(0, 0, 2, True, "gloo").is_main
    with pytest.raises(ValueError, match="contradicts"):
        DistInfo(rank=1, world_size=2, is_main=True)
    with pytest.raises(ValueError, match="outside"):
        DistInfo(rank=2, world_size=2)


def test_setup_errors_are_clear(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "0")
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT unset"):
        setup_distributed("cpu")
    with pytest.raises(ValueError, match="expected '', 'cpu', or GPU ids"):
        setup_distributed("gpu")
    clean_env.setenv("RANK", "5")
    with pytest.raises(ValueError, match="launch with torchrun"):
        setup_distributed("cpu")
    clean_env.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        setup_distributed("cpu")


def test_cuda_requests_checked_before_joining(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("LOCAL_WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no GPU is visible"):
        setup_distributed("0")
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="2 processes per machine but only 1 GPU"):
        setup_distributed("")
    with pytest.raises(ValueError, match="GPU 1 does not exist"):
        setup_distributed("0,1")


def test_conversion_keeps_state_dict_names_values_and_flags() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4, eps=1e-4, momentum=0.03)))
    with torch.no_grad():
        model[1][0].running_mean.uniform_()
        model[1][0].weight.uniform_()
    model[1][0].bias.requires_grad_(False)
    model.eval()
    old_bn = model[1][0]
    old_bn.weight.grad = torch.ones(4)  # accumulated before --sync-bn converts (resume mid-accumulation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # the trainer builds it before converting
    before = copy.deepcopy(model.state_dict())
    converted = convert_sync_bn(model, DistInfo(rank=0, world_size=2, backend="gloo"))
    bn = converted[1][0]
    assert type(bn) is CPUSyncBatchNorm and (bn.eps, bn.momentum) == (1e-4, 0.03)
    assert bn.weight is old_bn.weight and bn.running_var is old_bn.running_var  # optimizer and grads stay attached
    assert any(bn.weight is q for g in optimizer.param_groups for q in g["params"])
    assert torch.equal(bn.weight.grad, torch.ones(4))
    assert not bn.training and not bn.bias.requires_grad and bn.weight.requires_grad
    after = converted.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(converted(x), nn.Sequential(*copy.deepcopy(list(converted.children())))(x))


def test_import_prints_and_writes_nothing(tmp_path: Path, repo_root: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import utils.distributed"], cwd=repo_root, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""


# ---------------------------------------------------------------- two gloo processes

SPLIT = (5, 3)  # uneven local batches: the global statistics must weight ranks by their counts


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), YOLO_DIST_TIMEOUT="60",
    )  # fmt: skip
    info, device = setup_distributed("cpu")
    result: dict = {"info": info, "device": str(device)}
    result["tensor"] = all_reduce_sum(torch.tensor([rank + 1.0, 10.0]), info).tolist()
    pair = [torch.tensor([rank]), torch.tensor([[1.5, rank * 2.0]])]
    result["tensors"] = [t.tolist() for t in all_reduce_sum(pair, info)]
    result["counts"] = all_reduce_sum([(rank, 1, 2), (3, rank, 5)], info)
    result["object"] = broadcast_object({"from": rank}, info)
    barrier(info)

    torch.manual_seed(0)  # identical model and data on both ranks
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, eps=1e-4, momentum=0.03), nn.SiLU())
    with torch.no_grad():
        plain[1].weight.uniform_(0.5, 1.5)
        plain[1].bias.uniform_(-0.5, 0.5)
    synced = convert_sync_bn(copy.deepcopy(plain), info)
    result["converted"] = type(synced[1]).__name__
    lo, hi = sum(SPLIT[:rank]), sum(SPLIT[: rank + 1])
    diffs: dict[str, float] = {}
    for step, channels_last in enumerate((False, True)):
        x = torch.randn(sum(SPLIT), 3, 7, 6) * 3 + 2
        g = torch.randn(sum(SPLIT), 4, 5, 4)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x_all = x.clone().to(memory_format=fmt).requires_grad_(True)
        x_loc = x[lo:hi].clone().to(memory_format=fmt).requires_grad_(True)
        y_all = plain(x_all)
        y_loc = synced(x_loc)
        (y_all * g).sum().backward()
        (y_loc * g[lo:hi]).sum().backward()
        grads = all_reduce_sum([p.grad.clone() for p in synced.parameters()], info)  # what DDP sums (then /world)
        diffs[f"out{step}"] = (y_loc - y_all[lo:hi]).abs().max().item()
        diffs[f"x_grad{step}"] = (x_loc.grad - x_all.grad[lo:hi]).abs().max().item()
        diffs[f"param_grad{step}"] = max(  # relative: these are sums over thousands of elements
            ((a - p.grad).abs().max() / p.grad.abs().max()).item() for a, p in zip(grads, plain.parameters())
        )
        plain.zero_grad()
        synced.zero_grad()
    # a channel whose mean is 3000 times its spread: the variance of float32 squares would be percent-off
    torch.manual_seed(1)
    far = convert_sync_bn(nn.Sequential(nn.BatchNorm2d(2, momentum=1.0)), info)  # running_var = the batch's
    x_far = torch.randn(sum(SPLIT), 2, 8, 8) * 0.1 + 300
    far(x_far[lo:hi])
    want = x_far.double().transpose(0, 1).reshape(2, -1).var(1)
    diffs["far_var"] = ((far[0].running_var.double() - want).abs() / want).max().item()
    sd_plain, sd_sync = plain.state_dict(), synced.state_dict()
    result["keys_equal"] = list(sd_plain) == list(sd_sync)
    diffs["buffers"] = max((sd_plain[k].double() - sd_sync[k].double()).abs().max().item() for k in sd_plain)
    plain.eval()
    synced.eval()
    x = torch.randn(2, 3, 7, 6)
    diffs["eval"] = (plain(x) - synced(x)).abs().max().item()
    result["diffs"] = diffs
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    cleanup_distributed(info)


def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.start_processes(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank, res in enumerate(results):
        assert res["info"] == DistInfo(rank=rank, local_rank=rank, world_size=2, backend="gloo")
        assert res["device"] == "cpu"
        assert res["tensor"] == [3.0, 20.0]
        assert res["tensors"] == [[1], [[3.0, 2.0]]]
        assert res["counts"] == [(1, 2, 4), (6, 1, 10)]
        assert res["object"] == {"from": 0}
        assert res["converted"] == "CPUSyncBatchNorm" and res["keys_equal"]
        bad = {k: v for k, v in res["diffs"].items() if v > 2e-5}
        assert not bad, f"rank {rank}: SyncBatchNorm differs from BatchNorm on the whole batch: {bad}"


def _late_rank_worker(rank: int, port: int, out_dir: str) -> None:
    import os
    import time
    from datetime import timedelta

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), YOLO_DIST_TIMEOUT="30",
    )  # fmt: skip
    info, _ = setup_distributed("cpu")
    if rank == 1:  # a rank stuck elsewhere (or dead) must not make rank 0 hang at the barrier
        time.sleep(2)
        return
    try:
        barrier(info, timeout=timedelta(seconds=1))
        message = "no error"
    except RuntimeError as e:
        message = str(e)
    (Path(out_dir) / "rank0.txt").write_text(message)


def test_barrier_times_out_naming_the_missing_rank(tmp_path: Path) -> None:
    mp.start_processes(_late_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    message = (tmp_path / "rank0.txt").read_text()
    assert "Ranks 1 failed to pass monitoredBarrier" in message, message
