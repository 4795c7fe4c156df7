"""Reference-data simulator: schema contract, determinism, fraud scenarios, label delays and writers."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from trellis.simulate import (
    FraudSchedule,
    SimulationConfig,
    simulate,
    simulate_with_schedule,
    write_duckdb,
    write_files,
)

SMALL = SimulationConfig(n_customers=300, n_terminals=600, n_days=60)
TS = pa.timestamp("us")
US_PER_DAY = 86_400 * 1_000_000

EXPECTED_SCHEMAS = {
    "customers": [
        ("customer_id", pa.int64()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("mean_amount", pa.float64()),
        ("std_amount", pa.float64()),
        ("mean_nb_tx_per_day", pa.float64()),
        ("device_id", pa.int64()),
        ("institution_id", pa.int64()),
    ],
    "terminals": [("terminal_id", pa.int64()), ("x", pa.float64()), ("y", pa.float64())],
    "transactions": [
        ("transaction_id", pa.int64()),
        ("tx_datetime", TS),
        ("customer_id", pa.int64()),
        ("terminal_id", pa.int64()),
        ("device_id", pa.int64()),
        ("tx_amount", pa.float64()),
    ],
    "fraud_labels": [
        ("transaction_id", pa.int64()),
        ("customer_id", pa.int64()),
        ("terminal_id", pa.int64()),
        ("tx_datetime", TS),
        ("tx_fraud", pa.int32()),
        ("tx_fraud_scenario", pa.int32()),
        ("available_at", TS),
    ],
    "institutions": [("institution_id", pa.int64()), ("name", pa.string())],
}


@pytest.fixture(scope="module")
def small() -> tuple[dict[str, pa.Table], FraudSchedule]:
    return simulate_with_schedule(SMALL)


@pytest.fixture(scope="module")
def tables(small: tuple[dict[str, pa.Table], FraudSchedule]) -> dict[str, pa.Table]:
    return small[0]


@pytest.fixture(scope="module")
def tx(tables: dict[str, pa.Table]) -> dict[str, np.ndarray]:
    """Transactions joined with their labels, as numpy columns (same row order by contract)."""
    t, lab = tables["transactions"], tables["fraud_labels"]
    tx_us = t["tx_datetime"].to_numpy().astype("datetime64[us]").astype(np.int64)
    start_us = np.datetime64(SMALL.start_date, "us").astype(np.int64)
    return {
        "id": t["transaction_id"].to_numpy(),
        "us": tx_us,
        "day": (tx_us - start_us) // US_PER_DAY,
        "customer": t["customer_id"].to_numpy(),
        "terminal": t["terminal_id"].to_numpy(),
        "device": t["device_id"].to_numpy(),
        "amount": t["tx_amount"].to_numpy(),
        "fraud": lab["tx_fraud"].to_numpy(),
        "scenario": lab["tx_fraud_scenario"].to_numpy(),
        "available_us": lab["available_at"].to_numpy().astype("datetime64[us]").astype(np.int64),
    }


def _digest(tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    for name in sorted(tables):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, tables[name].schema) as writer:
            writer.write_table(tables[name])
        h.update(name.encode())
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ contract


def test_tables_and_schemas_match_the_contract(tables: dict[str, pa.Table]) -> None:
    assert list(tables) == list(EXPECTED_SCHEMAS)
    for name, expected in EXPECTED_SCHEMAS.items():
        assert tables[name].schema == pa.schema(expected), name
        assert tables[name].num_rows > 0
    assert tables["transactions"].schema.field("tx_datetime").type.tz is None


def test_transactions_are_numbered_in_time_order_with_one_label_each(
    tables: dict[str, pa.Table], tx: dict[str, np.ndarray]
) -> None:
    n = tables["transactions"].num_rows
    assert np.array_equal(tx["id"], np.arange(n))
    assert np.all(np.diff(tx["us"]) >= 0)
    labels = tables["fraud_labels"]
    for column in ("transaction_id", "customer_id", "terminal_id", "tx_datetime"):
        assert labels[column].equals(tables["transactions"][column]), column
    with duckdb.connect() as con:
        con.register("t", tables["transactions"])
        con.register("l", tables["fraud_labels"])
        per_tx = con.sql(
            "select min(c), max(c), count(*) from "
            "(select t.transaction_id, count(l.transaction_id) c from t left join l using (transaction_id) "
            "group by all)"
        ).fetchone()
    assert per_tx == (1, 1, n)


def test_profiles_follow_the_handbook_laws(tables: dict[str, pa.Table]) -> None:
    c = tables["customers"].to_pydict()
    mean, std = np.array(c["mean_amount"]), np.array(c["std_amount"])
    assert c["customer_id"] == list(range(SMALL.n_customers))
    assert c["device_id"] == c["customer_id"]
    assert np.all((mean >= 5) & (mean < 100)) and np.allclose(std, mean / 2)
    assert all(0 <= v < 4 for v in c["mean_nb_tx_per_day"])
    for table in ("customers", "terminals"):
        xy = np.array([tables[table]["x"].to_numpy(), tables[table]["y"].to_numpy()])
        assert np.all((xy >= 0) & (xy < 100))
    institutions = np.bincount(c["institution_id"], minlength=SMALL.n_institutions)
    assert len(institutions) == SMALL.n_institutions == tables["institutions"].num_rows
    assert institutions[0] > 3 * institutions[-1]  # skewed market shares
    assert len(set(tables["institutions"]["name"].to_pylist())) == SMALL.n_institutions


def test_transactions_follow_the_handbook_laws(
    tables: dict[str, pa.Table], tx: dict[str, np.ndarray]
) -> None:
    cust, term = tables["customers"], tables["terminals"]
    cxy = np.column_stack([cust["x"].to_numpy(), cust["y"].to_numpy()])
    txy = np.column_stack([term["x"].to_numpy(), term["y"].to_numpy()])
    distance = np.linalg.norm(cxy[tx["customer"]] - txy[tx["terminal"]], axis=1)
    assert distance.max() < SMALL.radius
    # Customers with no terminal in reach make no transactions; everyone else may.
    reachable = (np.linalg.norm(cxy[:, None, :] - txy[None, :, :], axis=2) < SMALL.radius).any(axis=1)
    assert not reachable.all(), "the small config should include a customer with no terminal in reach"
    assert not np.isin(np.flatnonzero(~reachable), tx["customer"]).any()
    assert tx["day"].min() >= 0 and tx["day"].max() < SMALL.n_days
    seconds = (tx["us"] % US_PER_DAY) / 1e6
    assert np.all(seconds == np.floor(seconds))
    assert abs(np.mean(seconds) - 43_200) < 500
    assert np.all(tx["amount"] >= 0)
    assert np.allclose(tx["amount"], np.round(tx["amount"], 2), atol=1e-9, rtol=0)
    expected = SMALL.n_days * np.asarray(cust["mean_nb_tx_per_day"].to_numpy())[reachable].sum() * 0.969
    assert abs(len(tx["id"]) / expected - 1) < 0.05


def test_default_size_matches_the_handbook() -> None:
    labels = simulate()["fraud_labels"]
    n = labels.num_rows
    fraud_rate = np.mean(labels["tx_fraud"].to_numpy())
    assert 1_700_000 < n < 1_850_000
    assert 0.006 < fraud_rate < 0.011
    assert set(np.unique(labels["tx_fraud_scenario"].to_numpy())) == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tables: dict[str, pa.Table]) -> None:
    again = simulate(SMALL)
    assert _digest(again) == _digest(tables)
    other = simulate(SimulationConfig(n_customers=300, n_terminals=600, n_days=60, seed=1))
    assert _digest(other) != _digest(tables)


def test_label_delay_law_does_not_move_transactions(tables: dict[str, pa.Table]) -> None:
    other = simulate(SimulationConfig(n_customers=300, n_terminals=600, n_days=60, label_delay="uniform"))
    assert other["transactions"].equals(tables["transactions"])
    assert not other["fraud_labels"].equals(tables["fraud_labels"])


# ------------------------------------------------------------------------------------------ frauds


def test_scenario_1_every_amount_above_220_is_fraud(tx: dict[str, np.ndarray]) -> None:
    assert np.all(tx["fraud"][tx["amount"] > 220] == 1)
    assert np.all(tx["amount"][tx["scenario"] == 1] > 220)
    assert np.array_equal(tx["fraud"] == 1, tx["scenario"] > 0)


def test_scenario_2_compromised_terminals_are_fraud_for_28_days(
    small: tuple[dict[str, pa.Table], FraudSchedule], tx: dict[str, np.ndarray]
) -> None:
    schedule = small[1]
    assert schedule.compromised_terminals.shape == (SMALL.n_days, 2)
    covered = np.zeros(len(tx["id"]), dtype=bool)
    for day, terminals in enumerate(schedule.compromised_terminals):
        in_window = (tx["day"] >= day) & (tx["day"] < day + 28) & np.isin(tx["terminal"], terminals)
        assert np.all(tx["fraud"][in_window] == 1)
        covered |= in_window
    # Scenario 3 may overwrite the number, never the label; nothing outside the windows is scenario 2.
    assert set(np.unique(tx["scenario"][covered])) <= {2, 3}
    assert not np.any(tx["scenario"][~covered] == 2)
    assert np.count_nonzero(tx["scenario"] == 2) > 0


def test_scenario_3_compromised_customers_pay_five_times_more_from_a_fraudster_device(
    small: tuple[dict[str, pa.Table], FraudSchedule], tx: dict[str, np.ndarray]
) -> None:
    tables, schedule = small
    mean_amount = tables["customers"]["mean_amount"].to_numpy()
    s3 = tx["scenario"] == 3
    assert s3.sum() > 50
    ratio = tx["amount"] / mean_amount[tx["customer"]]
    assert 4.0 < np.median(ratio[s3]) < 6.0
    assert 0.8 < np.median(ratio[tx["scenario"] == 0]) < 1.2

    own_device = tx["device"] == tx["customer"]
    assert np.all(own_device[~s3])
    assert np.all(tx["device"][s3] >= SMALL.n_customers)
    assert np.all(tx["device"][s3] < SMALL.n_customers + SMALL.n_fraud_devices)

    in_any_window = np.zeros(len(tx["id"]), dtype=bool)
    for day, customers in enumerate(schedule.compromised_customers):
        window = (tx["day"] >= day) & (tx["day"] < day + 14) & np.isin(tx["customer"], customers)
        in_any_window |= window
        # A third of the window's transactions are picked (more when windows overlap).
        assert np.count_nonzero(s3 & window) >= window.sum() // 3
        # The day's fraudster device only ever appears on that day's compromised customers.
        device_rows = tx["device"] == schedule.fraudster_devices[day]
        assert np.all(np.isin(tx["customer"][device_rows & window], customers))
    assert not np.any(s3 & ~in_any_window)
    assert 0.25 < s3.sum() / in_any_window.sum() < 0.45


def test_fraudster_devices_are_shared_across_compromised_customers(tx: dict[str, np.ndarray]) -> None:
    fraud_device = tx["device"] >= SMALL.n_customers
    pairs = np.unique(np.column_stack([tx["device"][fraud_device], tx["customer"][fraud_device]]), axis=0)
    _, customers_per_device = np.unique(pairs[:, 0], return_counts=True)
    assert customers_per_device.max() >= 3


# ------------------------------------------------------------------------------------------ labels


def test_fixed_delay_makes_labels_available_exactly_seven_days_later(tx: dict[str, np.ndarray]) -> None:
    assert np.all(tx["available_us"] - tx["us"] == 7 * US_PER_DAY)


@pytest.mark.parametrize("law", ["exponential", "uniform"])
def test_random_delays_are_non_negative_with_the_configured_mean(law: str) -> None:
    config = SimulationConfig(
        n_customers=300, n_terminals=600, n_days=60, label_delay=law, label_delay_days=3
    )
    labels = simulate(config)["fraud_labels"]
    delay_days = (
        labels["available_at"].to_numpy().astype("datetime64[us]")
        - labels["tx_datetime"].to_numpy().astype("datetime64[us]")
    ).astype(np.int64) / US_PER_DAY
    assert delay_days.min() >= 0
    assert abs(delay_days.mean() - 3) < 0.1
    if law == "uniform":
        assert delay_days.max() <= 6
    else:
        assert delay_days.max() > 6


# ------------------------------------------------------------------------------------------ writers


def test_write_duckdb_round_trips_and_replaces(tables: dict[str, pa.Table], tmp_path: Path) -> None:
    database = tmp_path / "warehouse.duckdb"
    counts = write_duckdb(tables, database)
    assert counts == {name: table.num_rows for name, table in tables.items()}
    assert write_duckdb(tables, database) == counts  # CREATE OR REPLACE, not append
    with duckdb.connect(str(database), read_only=True) as con:
        for name, table in tables.items():
            assert con.table(f"raw.{name}").to_arrow_table().equals(table), name
        assert con.sql("select count(*) from raw.transactions").fetchone() == (counts["transactions"],)
    assert write_duckdb({"terminals": tables["terminals"]}, database, schema="other") == {
        "terminals": tables["terminals"].num_rows
    }


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_write_files_round_trip_through_duckdb(tables: dict[str, pa.Table], tmp_path: Path, fmt: str) -> None:
    paths = write_files(tables, tmp_path / "out", fmt=fmt)
    assert set(paths) == set(tables)
    reader = "read_parquet" if fmt == "parquet" else "read_csv"
    with duckdb.connect() as con:
        for name, path in paths.items():
            assert path == tmp_path / "out" / f"{name}.{fmt}"
            assert con.sql(f"select count(*) from {reader}('{path}')").fetchone() == (tables[name].num_rows,)
        labels = con.sql(
            f"select sum(tx_fraud), min(available_at - tx_datetime), max(tx_datetime) "
            f"from {reader}('{paths['fraud_labels']}')"
        ).fetchone()
    assert labels is not None
    assert labels[0] == int(np.sum(tables["fraud_labels"]["tx_fraud"].to_numpy()))
    assert labels[1].days == 7
    assert labels[2] == tables["fraud_labels"]["tx_datetime"].to_pylist()[-1]


def test_written_parquet_is_byte_identical_across_runs(tmp_path: Path) -> None:
    config = SimulationConfig(n_customers=100, n_terminals=200, n_days=20)
    first = write_files(simulate(config), tmp_path / "a")
    second = write_files(simulate(config), tmp_path / "b")
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name


def test_write_files_rejects_unknown_format(tables: dict[str, pa.Table], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt must be 'parquet' or 'csv', got 'json'"):
        write_files(tables, tmp_path, fmt="json")


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_customers", 0),
        ("n_terminals", -5),
        ("n_days", 0),
        ("n_institutions", 0),
        ("n_fraud_devices", -1),
        ("n_days", 1.5),
        ("seed", -1),
        ("radius", 0.0),
        ("radius", math.inf),
        ("label_delay_days", -1.0),
        ("label_delay", "gamma"),
        ("start_date", "2018-13-01"),
        ("start_date", "yesterday"),
    ],
)
def test_invalid_config_names_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SimulationConfig\.{field} .*got {repr(value)}"):
        SimulationConfig(**{field: value})


def test_scaled_grows_population_and_keeps_terminals_per_customer() -> None:
    base = SimulationConfig()
    big = base.scaled(4)
    assert (big.n_customers, big.n_terminals) == (20_000, 40_000)
    assert big.radius == pytest.approx(2.5)
    expected_terminals_in_reach = math.pi * big.radius**2 * big.n_terminals / 100**2
    assert expected_terminals_in_reach == pytest.approx(math.pi * 25 * 10_000 / 100**2)
    assert (big.n_compromised_terminals_per_day, big.n_compromised_customers_per_day) == (8, 12)
    assert (big.n_days, big.seed, big.label_delay) == (base.n_days, base.seed, base.label_delay)
    tiny = base.scaled(0.001)
    assert (tiny.n_customers, tiny.n_compromised_terminals_per_day) == (5, 1)
    with pytest.raises(ValueError, match="scale must be a positive finite number, got 0"):
        base.scaled(0)


def test_progress_reports_each_stage() -> None:
    messages: list[str] = []
    simulate(SimulationConfig(n_customers=50, n_terminals=100, n_days=5), progress=messages.append)
    stages = [m.split(":")[0] for m in messages]
    for stage in ("customers", "terminals", "neighbourhoods", "transactions", "frauds", "labels", "done"):
        assert stage in stages


@pytest.mark.parametrize("radius", [0.05, 3.0, 5.0, 37.0, 150.0])
def test_neighbourhood_grid_matches_brute_force(radius: float) -> None:
    from trellis.simulate import _terminals_within_radius

    rng = np.random.default_rng(7)
    customers, terminals = rng.uniform(0, 100, (400, 2)), rng.uniform(0, 100, (900, 2))
    # A small pair budget forces several chunks, exercising the chunk boundaries.
    ptr, neighbours = _terminals_within_radius(customers, terminals, radius, chunk_pairs=5_000)
    within = np.linalg.norm(customers[:, None, :] - terminals[None, :, :], axis=2) < radius
    assert np.array_equal(np.diff(ptr), within.sum(axis=1))
    for c in range(len(customers)):
        assert np.array_equal(neighbours[ptr[c] : ptr[c + 1]], np.flatnonzero(within[c]))
