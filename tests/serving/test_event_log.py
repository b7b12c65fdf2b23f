"""serving/event_log.py: `g2rec score --all` over an event log, partitioned by user."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli.main import cli
from serving.batch import BatchConfig
from serving.event_log import EventLogConfig, score_event_log, spill
from serving.run_dir import RunConfig
from tests.serving.conftest import MAX_LEN, N

USERS = 3000


def event_log(n_users=USERS, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 2 * MAX_LEN, size=n_users)
    users = np.repeat(np.arange(n_users), sizes)
    return pd.DataFrame({"user": users, "item": rng.integers(1, N + 1, size=len(users)) * 10,
                         "timestamp": rng.integers(0, 1000, size=len(users))}).sample(frac=1, random_state=seed)


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "events.parquet"
    pq.write_table(pa.Table.from_pandas(event_log(), preserve_index=False), path, row_group_size=20_000)
    return path


def test_every_user_of_the_range_is_scored_once_as_the_serving_rule_says(run_dir, recommender, log_file, tmp_path):
    out = tmp_path / "out"
    s = score_event_log(RunConfig(run_dir), EventLogConfig(log_file, since=100, until=900, rows_per_partition=9000),
                        out, BatchConfig(k=3))
    rows = pd.read_parquet(out)
    assert len(list(out.glob("part-*.parquet"))) >= 4 and not list(out.glob("g2rec-score-*"))  # scratch removed
    events = event_log()
    events = events[(events.timestamp >= 100) & (events.timestamp < 900)].sort_values(["user", "timestamp"], kind="stable")
    assert s.users == events.user.nunique() == rows.user.nunique()
    for user in ["0", "17", "2999"]:
        history = events[events.user == int(user)].item.tolist()
        (want,) = recommender.recommend([history], 3)
        got = rows[rows.user == user].sort_values("rank")
        assert got.item.tolist() == want.items and not set(got.item) & set(history)


def test_no_partition_holds_much_more_than_its_share_of_events(log_file, tmp_path):
    parts = spill(EventLogConfig(log_file, rows_per_partition=5000), tmp_path)
    sizes = [pa.ipc.open_file(p).read_all().num_rows for p in parts]
    assert len(parts) >= 7 and max(sizes) < 2 * 5000 and sum(sizes) == len(event_log())
    users = [set(pa.ipc.open_file(p).read_all().column("user").to_pylist()) for p in parts]
    assert sum(map(len, users)) == len(set().union(*users)) == USERS  # each user in one partition


def test_workers_split_the_users_and_give_the_same_rows(run_dir, log_file, tmp_path):
    kw = dict(rows_per_partition=20_000)
    one = score_event_log(RunConfig(run_dir), EventLogConfig(log_file, **kw), tmp_path / "one", BatchConfig(k=2))
    two = score_event_log(RunConfig(run_dir), EventLogConfig(log_file, workers=2, **kw), tmp_path / "two",
                          BatchConfig(k=2))
    assert one == two and one.users == USERS
    key = ["user", "rank"]
    a = pd.read_parquet(tmp_path / "one").sort_values(key).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "two").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_score_all_reads_a_csv_log_from_the_command_line(run_dir, tmp_path):
    event_log(200).to_csv(tmp_path / "events.csv", index=False)
    res = CliRunner().invoke(cli, ["score", str(run_dir), "--all", str(tmp_path / "events.csv"), "--events-format",
                                   "csv", "--out", str(tmp_path / "out"), "-k", "2"])
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(tmp_path / "out").user.nunique() == 200 and "200 users" in res.output
