"""Data-parallel training with torch.distributed: 2 CPU processes, gloo, localhost."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from napari_brainatlas.fusemap import FuseMap, make_synthetic_sections
        from napari_brainatlas.fusemap.distributed import rank_world

        assert rank_world() == (rank, world)
        secs = make_synthetic_sections(
            n_sections=2, n_cells=[200, 140], n_genes=20, n_shared=10, seed=5
        )
        m = FuseMap(
            secs, seed=0, n_latent=8, n_hidden=32, disc_hidden=16, batch_size=32, device="cpu"
        )
        init = torch.cat([p.detach().reshape(-1) for p in m.module.parameters()]).clone()
        m.train(max_epochs=1)
        flat = torch.cat([p.detach().reshape(-1) for p in m.module.parameters()])
        torch.save(
            {
                "init": init,
                "final": flat,
                "w": torch.from_numpy(np.concatenate([sd.w_cell for sd in m.data])),
            },
            f"{out}/rank{rank}.pt",
        )
        with open(f"{out}/rank{rank}.json", "w") as fh:
            json.dump(m.history, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_ddp_gloo_two_processes(tmp_path):
    store = tmp_path / "store"
    mp.spawn(_worker, args=(2, str(store), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["init"], r1["init"])  # same start (broadcast)
    assert not torch.equal(r0["init"], r0["final"])  # training moved the weights
    torch.testing.assert_close(r0["final"], r1["final"], rtol=1e-5, atol=1e-6)  # in sync
    torch.testing.assert_close(r0["w"], r1["w"])  # same balance weights
    h0 = json.loads((tmp_path / "rank0.json").read_text())
    h1 = json.loads((tmp_path / "rank1.json").read_text())
    assert len(h0) == len(h1) == 2
    assert [h["val_loss"] for h in h0] == pytest.approx([h["val_loss"] for h in h1])
