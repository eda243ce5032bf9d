"""bench/gemm.py runs end to end (tiny sizes): every column present, results checked."""
from __future__ import annotations

from bench import gemm


def test_gemm_bench_times_every_tile_beside_openblas(monkeypatch):
    monkeypatch.setattr(gemm.machine, "read_bandwidth", lambda nbytes, reps: {"gbps": 1.0})
    res = gemm.run([1, 130], ["smollm2-up"], threads=1, reps=1, tiles=True)
    lib, _ = gemm.engine()
    names = {f"tile:{n}" for _, n in gemm.tiles_of_isa(lib)}
    assert names and lib.kiln_gemm_tile() in [t for t, _ in gemm.tiles_of_isa(lib)]
    assert [r["M"] for r in res["rows"]] == [1, 130]
    for r in res["rows"]:
        assert r["shape"] == "smollm2-up" and r["packed_rel_err"] < 1e-5
        assert names <= set(r) and all(r[x] > 0 for x in names | {"packed", "numpy"})
    table = gemm.table(res)
    assert "tile:" in table and table.count("| smollm2-up (576→1536) |") == 2
