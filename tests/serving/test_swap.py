"""Hot swapping under load: a real `g2rec serve --watch` on loopback, 16 concurrent clients, the
served run promoted 3 times; no request fails and every answer is wholly its named version's."""

import pytest

from bench.serve import ServeProcess, point, swap_under_load
from serving.run_dir import RunConfig, open_run, read_version

USERS = [{"history": [10, 20, 30]}, {"history": [500, 40]}, {"history": [99999]}]


@pytest.mark.integration
def test_three_swaps_under_16_clients_fail_nothing_and_mix_no_versions(run_dir, other_run_dir, tmp_path):
    runs = [run_dir, other_run_dir]
    versions = [read_version(r).version for r in runs]
    assert versions[0] != versions[1]
    expected = {v: [r.items for r in open_run(RunConfig(d)).recommend([u["history"] for u in USERS], 5)]
                for v, d in zip(versions, runs)}
    assert expected[versions[0]] != expected[versions[1]]
    point(tmp_path, run_dir)
    server = ServeProcess("--watch", tmp_path, "--poll-seconds", "0.2")
    try:
        result, took = swap_under_load(server, tmp_path, runs, versions, {"users": USERS, "k": 5}, expected,
                                       clients=16, swaps=3, per_swap_s=5.0)
    finally:
        server.stop()
    assert result.failed == 0 and result.mixed == 0, (result.failed, result.mixed)
    assert set(result.versions) == set(versions) and len(took) == 3 and max(took) < 5
    assert server.log.count("swapped to model") == 3 and "Traceback" not in server.log
