"""Batch inference on many processes: the README's "Many machines" recipes, run for real.

A ``RuntimeModel`` travels to the workers by pickle (its arrays, re-planned
there); partitions arrive through pickle-5 buffers that may be unaligned.
Each worker process uses the thread count Dask gives it (``OMP_NUM_THREADS``
from ``threads_per_worker``), not every core of the machine.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

import hwreg_rs as hw

try:  # the distributed extra; the test extra installs it
    import dask.array as da
    import distributed
except ImportError:  # pragma: no cover - only without the extra
    da = distributed = None
needs_dask = pytest.mark.skipif(distributed is None, reason="pip install 'hwreg-rs[distributed]'")


def _model() -> hw.runtime.RuntimeModel:
    net = hw.nn.mlp([64, 48, 10], rng=0).eval()
    return hw.runtime.convert(net, input_shape=(64,))


def _worker_threads() -> tuple[int, str | None]:
    import hwreg_rs
    return hwreg_rs.num_threads(), os.environ.get("OMP_NUM_THREADS")


@pytest.fixture(scope="module")
def client():
    # Two worker processes, one thread each: what `dask worker --nthreads 1` runs per process.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as c:
        yield c


@needs_dask
def test_each_worker_uses_the_thread_count_dask_gives_it(client):
    seen = client.run(_worker_threads)
    assert len(seen) == 2
    for threads, omp in seen.values():
        assert omp == "1"  # Dask's nanny sets it from threads_per_worker
        assert threads == 1


@needs_dask
def test_client_map_over_partitions_matches_one_predict(client):
    rt = _model()
    x = np.random.default_rng(1).standard_normal((800, 64)).astype(np.float32)
    parts = np.array_split(x, 10)
    [model] = client.scatter([rt], broadcast=True)
    futures = client.map(lambda m, part: m.predict(part), [model] * len(parts), parts, pure=False)
    got = np.concatenate(client.gather(futures))
    np.testing.assert_array_equal(got, rt.predict(x))
    assert len({w for ws in client.who_has(futures).values() for w in ws}) == 2  # both processes worked


@needs_dask
def test_dask_array_map_blocks_matches_one_predict(client):
    rt = _model()
    x = np.random.default_rng(2).standard_normal((800, 64)).astype(np.float32)
    X = da.from_array(x, chunks=(100, 64))  # 8 partitions
    y = X.map_blocks(rt.predict, dtype=np.float32, chunks=(100, 10))
    np.testing.assert_array_equal(y.compute(), rt.predict(x))


# Ray warns about its own deprecated settings on import; those are not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_data_map_batches_matches_one_predict(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is optional: pip install 'hwreg-rs[distributed]' ray")
    path = tmp_path / "m.hwreg"
    rt = _model()
    rt.save(path)
    x = np.random.default_rng(3).standard_normal((400, 64)).astype(np.float32)

    class Predict:
        def __init__(self, model_path: str) -> None:
            self.rt = hw.runtime.load(model_path)

        def __call__(self, batch: dict) -> dict:
            return {"y": self.rt.predict(np.stack(batch["x"]).astype(np.float32))}

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        ds = ray.data.from_items([{"x": row} for row in x])
        out = ds.map_batches(Predict, fn_constructor_args=(str(path),), batch_size=50, concurrency=2,
                             batch_format="numpy").take_all()
    finally:
        ray.shutdown()
    got = np.stack([r["y"] for r in out])
    # Ray Data may reorder blocks: compare as sets of rows.
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(rt.predict(x), axis=0))
