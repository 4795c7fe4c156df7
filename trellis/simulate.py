"""Reference data: a seeded, vectorised port of the handbook's transaction simulator.

The generator follows the simulator of *Reproducible Machine Learning for Credit Card Fraud Detection*
(Le Borgne et al.) so that results on this data are comparable with the handbook: customer and terminal
profiles on a 100 x 100 grid, Poisson daily activity, the same amount and time-of-day laws, and the three
fraud scenarios applied in the same order. On top of it (design section 7) it adds devices, shared
fraudster devices, the customer's bank, and a label ``available_at`` so that label maturity is real.

The handbook loops per customer and per transaction; here every stage is a handful of numpy array
operations (the only Python loops are over days, for the fraud scenarios), which takes the default
1.75M-transaction dataset from many minutes to about a second. Each stage draws from its own child stream of
one ``SeedSequence`` so that, for example, changing the label-delay law does not move a single
transaction.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from trellis.spec import Project

__all__ = [
    "LABEL_DELAYS",
    "REGIONS",
    "TABLE_SCHEMAS",
    "DeclaredSimulation",
    "FraudSchedule",
    "SimulationConfig",
    "customer_region",
    "declared_simulation",
    "simulate",
    "simulate_with_schedule",
    "write_declared",
    "write_duckdb",
    "write_files",
    "write_tables",
]

LABEL_DELAYS: tuple[str, ...] = ("fixed", "exponential", "uniform")

_SECONDS_PER_DAY = 86_400
_US_PER_SECOND = 1_000_000
_US_PER_DAY = _SECONDS_PER_DAY * _US_PER_SECOND
_GRID_SIZE = 100.0  # side of the square customers and terminals live on
_FRAUD_AMOUNT_THRESHOLD = 220.0
_COMPROMISED_AMOUNT_FACTOR = 5.0
_INSTITUTION_ZIPF_EXPONENT = 1.1

_TS = pa.timestamp("us")
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "customers": pa.schema(
        [
            ("customer_id", pa.int64()),
            ("x", pa.float64()),
            ("y", pa.float64()),
            ("mean_amount", pa.float64()),
            ("std_amount", pa.float64()),
            ("mean_nb_tx_per_day", pa.float64()),
            ("device_id", pa.int64()),
            ("institution_id", pa.int64()),
        ]
    ),
    "terminals": pa.schema([("terminal_id", pa.int64()), ("x", pa.float64()), ("y", pa.float64())]),
    "transactions": pa.schema(
        [
            ("transaction_id", pa.int64()),
            ("tx_datetime", _TS),
            ("customer_id", pa.int64()),
            ("terminal_id", pa.int64()),
            ("device_id", pa.int64()),
            ("tx_amount", pa.float64()),
        ]
    ),
    "fraud_labels": pa.schema(
        [
            ("transaction_id", pa.int64()),
            ("customer_id", pa.int64()),
            ("terminal_id", pa.int64()),
            ("tx_datetime", _TS),
            # int32 rather than int8: the platform's logical types (trellis.types) have no 8-bit integer.
            ("tx_fraud", pa.int32()),
            ("tx_fraud_scenario", pa.int32()),
            ("available_at", _TS),
        ]
    ),
    "institutions": pa.schema([("institution_id", pa.int64()), ("name", pa.string())]),
}

# Fictional bank names; combined pairwise they give 20 x 20 distinct names before a numeric suffix is needed.
_NAME_STEMS = (
    "Northwind", "Bluewater", "Redstone", "Silverline", "Oakridge", "Harbor", "Summit", "Meridian",
    "Cedar", "Granite", "Lakeside", "Pioneer", "Beacon", "Evergreen", "Ironbridge", "Sterling",
    "Highland", "Riverside", "Crescent", "Atlas",
)  # fmt: skip
_NAME_KINDS = (
    "Bank", "Savings", "Credit Union", "Trust", "Financial", "Bancorp", "Capital", "Mutual",
    "Commerce Bank", "National Bank", "Federal Savings", "Community Bank", "Cooperative Bank",
    "Merchant Bank", "Direct", "Bank & Trust", "Building Society", "Private Bank", "Union Bank",
    "Digital Bank",
)  # fmt: skip


def _parse_start_date(value: object) -> dt.date:
    if not isinstance(value, str):
        raise ValueError(
            f"SimulationConfig.start_date must be an ISO date string (YYYY-MM-DD), got {value!r}"
        )
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"SimulationConfig.start_date must be an ISO date (YYYY-MM-DD), got {value!r}"
        ) from None


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass(frozen=True)
class SimulationConfig:
    """Size, seed and label-delay law of the reference dataset; defaults reproduce the handbook's size.

    Invalid values raise ``ValueError`` at construction, naming the field and the value.
    """

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    label_delay_days: float = 7.0
    label_delay: str = "fixed"  # "fixed" | "exponential" (mean label_delay_days) | "uniform" (0..2x mean)
    n_institutions: int = 20
    n_fraud_devices: int = 40
    # Handbook constants, exposed so that ``scaled`` can keep the fraud rate constant as the data grows.
    n_compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    n_compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14

    def __post_init__(self) -> None:
        for name in (
            "n_customers",
            "n_terminals",
            "n_days",
            "n_institutions",
            "n_fraud_devices",
            "n_compromised_terminals_per_day",
            "terminal_compromise_days",
            "n_compromised_customers_per_day",
            "customer_compromise_days",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"SimulationConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"SimulationConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not _is_real(self.radius) or not math.isfinite(self.radius) or self.radius <= 0:
            raise ValueError(f"SimulationConfig.radius must be a positive finite number, got {self.radius!r}")
        if (
            not _is_real(self.label_delay_days)
            or not math.isfinite(self.label_delay_days)
            or self.label_delay_days < 0
        ):
            raise ValueError(
                "SimulationConfig.label_delay_days must be a non-negative finite number, "
                f"got {self.label_delay_days!r}"
            )
        if self.label_delay not in LABEL_DELAYS:
            raise ValueError(
                f"SimulationConfig.label_delay must be one of {', '.join(LABEL_DELAYS)}, "
                f"got {self.label_delay!r}"
            )
        _parse_start_date(self.start_date)

    @property
    def start(self) -> np.datetime64:
        """Midnight of the first simulated day, as a microsecond ``datetime64``."""
        return np.datetime64(_parse_start_date(self.start_date), "us")

    def scaled(self, scale: float) -> SimulationConfig:
        """The same world with ``scale`` times as many customers and terminals.

        The radius shrinks by ``sqrt(scale)`` so that each customer still sees about as many terminals
        (~78 by default) and every terminal about as many transactions; the daily number of compromised
        terminals and customers and the fraudster-device pool grow with the population so the fraud rate
        stays about the same. Without that, a 10x dataset would have 10x longer neighbour lists and a
        fraud rate dominated by scenario 1.
        """
        if not _is_real(scale) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")

        def grow(n: int) -> int:
            return max(1, round(n * scale))

        return replace(
            self,
            n_customers=grow(self.n_customers),
            n_terminals=grow(self.n_terminals),
            radius=self.radius / math.sqrt(scale),
            n_fraud_devices=grow(self.n_fraud_devices),
            n_compromised_terminals_per_day=grow(self.n_compromised_terminals_per_day),
            n_compromised_customers_per_day=grow(self.n_compromised_customers_per_day),
        )


@dataclass(frozen=True)
class FraudSchedule:
    """Ground truth the fraud scenarios were drawn from (row ``d`` = compromises starting on day ``d``).

    Not part of the reference tables (a model must not see it); tests and analyses use it to check that
    the scenarios did what they claim.
    """

    compromised_terminals: np.ndarray  # (n_days, k_terminals) terminal ids
    compromised_customers: np.ndarray  # (n_days, k_customers) customer ids
    fraudster_devices: np.ndarray  # (n_days,) device id used by that day's compromised customers


def simulate(
    config: SimulationConfig = SimulationConfig(),  # noqa: B008 - frozen, so a shared default is safe
    progress: Callable[[str], None] | None = None,
) -> dict[str, pa.Table]:
    """Generate the reference tables: customers, terminals, transactions, fraud_labels, institutions."""
    tables, _ = simulate_with_schedule(config, progress)
    return tables


def simulate_with_schedule(
    config: SimulationConfig = SimulationConfig(),  # noqa: B008 - frozen, so a shared default is safe
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, pa.Table], FraudSchedule]:
    """``simulate`` plus the fraud ground truth it drew."""
    if not isinstance(config, SimulationConfig):
        raise TypeError(f"config must be a SimulationConfig, got {type(config).__name__}")
    report = progress or (lambda _message: None)
    streams = dict(
        zip(
            ("customers", "terminals", "transactions", "terminal_frauds", "customer_frauds", "labels"),
            (np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(config.seed).spawn(6)),
            strict=True,
        )
    )

    report(f"customers: {config.n_customers:,}")
    customers = _customer_profiles(config, streams["customers"])
    report(f"terminals: {config.n_terminals:,}")
    terminals = _terminal_profiles(config, streams["terminals"])
    report(f"neighbourhoods: radius {config.radius:g}")
    ptr, neighbours = _terminals_within_radius(customers["xy"], terminals["xy"], config.radius)
    report(f"transactions: {config.n_days} days")
    tx = _transactions(config, customers, ptr, neighbours, streams["transactions"])
    report(f"frauds: {len(tx['amount']):,} transactions")
    schedule = _add_frauds(config, tx, streams["terminal_frauds"], streams["customer_frauds"])
    report("labels")
    available_at = _label_availability(config, tx["datetime"], streams["labels"])
    report("tables")
    tables = _tables(config, customers, terminals, tx, available_at)
    n_fraud = int(tx["fraud"].sum())
    report(f"done: {len(tx['amount']):,} transactions, {n_fraud:,} frauds")
    return tables, schedule


def write_duckdb(tables: dict[str, pa.Table], database: str | Path, schema: str = "raw") -> dict[str, int]:
    """Create or replace ``schema.<table>`` for every table in ``database``; returns row counts by table name.

    Every table, whatever is there: for a scratch database. A project's warehouse gets only the tables its
    simulated sources declare (``write_declared``)."""
    counts = write_tables(tables, database, {f"{schema}.{name}": name for name in tables})
    return {name: counts[f"{schema}.{name}"] for name in tables}


def write_tables(tables: dict[str, pa.Table], database: str | Path, targets: dict[str, str]) -> dict[str, int]:
    """Create or replace each warehouse table of ``targets`` (``schema.table`` -> the simulator table it
    holds) in ``database``, in one transaction; returns row counts by warehouse table."""
    import duckdb

    counts: dict[str, int] = {}
    with duckdb.connect(str(database)) as con:
        # One transaction, so readers never see a half-replaced dataset (new transactions, old labels).
        con.begin()
        for target, name in targets.items():
            parts = target.split(".")
            qualified = ".".join(_quote(part) for part in parts)
            if len(parts) > 1:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {'.'.join(_quote(part) for part in parts[:-1])}")
            view = f"__trellis_simulate_{name}"
            con.register(view, tables[name])
            try:
                con.execute(f"CREATE OR REPLACE TABLE {qualified} AS SELECT * FROM {view}")
            finally:
                con.unregister(view)
            row = con.execute(f"SELECT count(*) FROM {qualified}").fetchone()
            assert row is not None
            counts[target] = int(row[0])
        con.commit()
    return counts


@dataclass(frozen=True)
class DeclaredSimulation:
    """A project's simulation: the world its simulated sources declare and the tables it owns."""

    config: SimulationConfig
    targets: dict[str, str]  # warehouse table -> simulator table, every table the simulation writes
    sources: tuple[str, ...]  # the simulated sources


def declared_simulation(project: Project, *, scale: float | None = None, days: int | None = None,
                        seed: int | None = None) -> DeclaredSimulation | None:
    """The simulation the project's sources declare (``simulated:``), with ``scale``, ``days`` or ``seed``
    overriding the declared ones (a smaller world for a test or a benchmark); None when no source is
    simulated. The definitions are validated, so the simulated sources agree on one world."""
    simulated = [s for s in project.sources.values() if s.simulated is not None]
    if not simulated:
        return None
    world = simulated[0].simulated
    assert world is not None
    config = SimulationConfig(seed=world.seed if seed is None else seed,
                              n_days=world.days if days is None else days,
                              start_date=world.start_date.isoformat())
    targets = {table: name for source in simulated for table, name in source.simulated_writes}
    return DeclaredSimulation(config.scaled(world.scale if scale is None else scale), targets,
                              tuple(s.name for s in simulated))


def write_declared(simulation: DeclaredSimulation, database: str | Path,
                   progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Simulate ``simulation``'s world and write the tables it owns, and only those, into ``database``;
    returns row counts by warehouse table."""
    tables = simulate(simulation.config, progress=progress)
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    return write_tables(tables, database, simulation.targets)


def write_files(tables: dict[str, pa.Table], directory: str | Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write one ``<table>.<fmt>`` file per table (``parquet`` or ``csv``) into ``directory``."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, table in tables.items():
        path = out / f"{name}.{fmt}"
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, path)
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, path)
        paths[name] = path
    return paths


# --------------------------------------------------------------------------------------------- stages


def _customer_profiles(config: SimulationConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = config.n_customers
    # Drawn column by column rather than row by row as in the handbook: same laws, vectorised.
    xy = rng.uniform(0.0, _GRID_SIZE, size=(n, 2))
    mean_amount = rng.uniform(5.0, 100.0, size=n)
    mean_nb_tx_per_day = rng.uniform(0.0, 4.0, size=n)
    # Real bank market shares are heavy-tailed, which is what makes per-bank batch features interesting.
    weights = 1.0 / np.arange(1, config.n_institutions + 1) ** _INSTITUTION_ZIPF_EXPONENT
    institution_id = rng.choice(config.n_institutions, size=n, p=weights / weights.sum())
    return {
        "xy": xy,
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2.0,
        "mean_nb_tx_per_day": mean_nb_tx_per_day,
        "institution_id": institution_id.astype(np.int64),
    }


def _terminal_profiles(config: SimulationConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"xy": rng.uniform(0.0, _GRID_SIZE, size=(config.n_terminals, 2))}


def _terminals_within_radius(
    customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float, chunk_pairs: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency (``ptr``, ``terminal ids``) of the terminals strictly closer than ``radius``.

    A dense customer x terminal distance matrix is 400 MB at the default size and quadratic in scale, so
    terminals are bucketed on a grid of cells at least ``radius`` wide and each customer only measures
    the 3 x 3 cells around its own. Neighbour lists come out in ascending terminal id, like the
    handbook's ``np.where``.
    """
    # Cap the cell count so a tiny radius cannot allocate a huge cell index.
    n_cells = max(1, min(int(_GRID_SIZE // radius), 1024))
    cell_size = _GRID_SIZE / n_cells

    def cell_of(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.clip((xy // cell_size).astype(np.int64), 0, n_cells - 1)
        return c[:, 0], c[:, 1]

    tcx, tcy = cell_of(terminal_xy)
    order = np.argsort(tcx * n_cells + tcy, kind="stable")
    cell_start = np.searchsorted((tcx * n_cells + tcy)[order], np.arange(n_cells * n_cells + 1))
    sorted_xy = terminal_xy[order]

    ccx, ccy = cell_of(customer_xy)
    offsets = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)])
    nx = ccx[:, None] + offsets[None, :, 0]
    ny = ccy[:, None] + offsets[None, :, 1]
    valid = (nx >= 0) & (nx < n_cells) & (ny >= 0) & (ny < n_cells)
    cell = np.where(valid, nx * n_cells + ny, 0)
    lo = np.where(valid, cell_start[cell], 0)
    hi = np.where(valid, cell_start[cell + 1], 0)
    per_customer = (hi - lo).sum(axis=1)

    n_customers = len(customer_xy)
    counts = np.zeros(n_customers, dtype=np.int64)
    found: list[np.ndarray] = []
    start = 0
    while start < n_customers:
        # Bound the candidate-pair arrays: at 10x scale they would otherwise run to hundreds of MB.
        budget = np.cumsum(per_customer[start:])
        stop = start + max(1, int(np.searchsorted(budget, chunk_pairs, side="right")))
        seg_lo, seg_len = lo[start:stop].ravel(), (hi - lo)[start:stop].ravel()
        owner = np.repeat(np.arange(start, stop).repeat(offsets.shape[0]), seg_len)
        # Position inside each (customer, cell) run: a global arange minus the run's first index.
        run_first = np.cumsum(seg_len) - seg_len
        pos = np.repeat(seg_lo - run_first, seg_len) + np.arange(seg_len.sum())
        d2 = ((sorted_xy[pos] - customer_xy[owner]) ** 2).sum(axis=1)
        keep = d2 < radius * radius
        owner, term = owner[keep], order[pos[keep]]
        # Sort by (customer, terminal id) so the lists are canonical; the packed key is unique, so a plain
        # sort is enough and cheaper than a lexsort.
        n_terminals = len(terminal_xy)
        packed = np.sort((owner - start) * n_terminals + term)
        found.append(packed % n_terminals)
        counts[start:stop] = np.bincount(owner - start, minlength=stop - start)
        start = stop
    ptr = np.zeros(n_customers + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    neighbours = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    return ptr, neighbours.astype(np.int64)


def _transactions(
    config: SimulationConfig,
    customers: dict[str, np.ndarray],
    ptr: np.ndarray,
    neighbours: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    n_customers, n_days = config.n_customers, config.n_days
    degree = np.diff(ptr)
    # One Poisson draw per (day, customer), the handbook's daily activity; customers with no terminal in
    # reach cannot transact (the handbook drops their draws too).
    nb_tx = rng.poisson(customers["mean_nb_tx_per_day"][None, :], size=(n_days, n_customers))
    nb_tx[:, degree == 0] = 0
    # int32 until the time sort: these passes are memory-bound, and half the bytes is nearly half the time.
    cust = np.repeat(np.tile(np.arange(n_customers, dtype=np.int32), n_days), nb_tx.ravel())
    day_start = np.repeat(np.arange(n_days, dtype=np.int64) * _SECONDS_PER_DAY, nb_tx.sum(axis=1))

    # The handbook truncates the time of day to whole seconds, so float32 draws (twice as fast) lose
    # nothing that survives the truncation. Draws outside the day get a key past the end, so the sort
    # that orders transactions in time also drops them, without a separate filtering pass.
    # In-place arithmetic throughout: at 10x scale every fresh 140 MB temporary costs more in page
    # faults than the arithmetic itself.
    time_of_day = rng.standard_normal(len(cust), dtype=np.float32)
    time_of_day *= 20_000
    time_of_day += _SECONDS_PER_DAY / 2
    np.floor(time_of_day, out=time_of_day)
    inside = (time_of_day >= 0) & (time_of_day < _SECONDS_PER_DAY)
    horizon = int(n_days) * _SECONDS_PER_DAY
    elapsed = time_of_day.astype(np.int64)
    elapsed += day_start
    elapsed[~inside] = horizon
    n = int(np.count_nonzero(inside))
    # Ties in time keep generation order, so transaction ids are reproducible.
    elapsed, order = _stable_sort(elapsed, horizon + 1)
    elapsed, cust = elapsed[:n], cust[order[:n]].astype(np.int64)

    # Drawn in final (time) order, so the per-transaction columns never need reordering.
    mean = customers["mean_amount"][cust]
    amount = rng.standard_normal(n)
    amount *= customers["std_amount"][cust]
    amount += mean
    negative = np.flatnonzero(amount < 0)
    amount[negative] = rng.uniform(0.0, 2.0 * mean[negative])
    reach = degree[cust]
    uniform = rng.random(n)
    uniform *= reach
    slot = uniform.astype(np.int64)
    np.minimum(slot, reach - 1, out=slot)  # guards the rare float rounding of random() * reach to reach
    terminal = neighbours[ptr[cust] + slot]
    return {
        "datetime": config.start + (elapsed * _US_PER_SECOND).astype("timedelta64[us]"),
        "day": elapsed // _SECONDS_PER_DAY,
        "customer": cust,
        "terminal": terminal,
        "device": cust.copy(),  # a customer's own device has the customer's id
        "amount": np.round(amount, 2),
        "fraud": np.zeros(n, dtype=np.int32),
        "scenario": np.zeros(n, dtype=np.int32),
    }


def _add_frauds(
    config: SimulationConfig,
    tx: dict[str, np.ndarray],
    terminal_rng: np.random.Generator,
    customer_rng: np.random.Generator,
) -> FraudSchedule:
    """The handbook's three scenarios in its order; a later scenario overwrites an earlier one's number."""
    n_days = config.n_days
    day, amount, fraud, scenario = tx["day"], tx["amount"], tx["fraud"], tx["scenario"]

    # Scenario 1: any amount above the threshold.
    big = amount > _FRAUD_AMOUNT_THRESHOLD
    fraud[big], scenario[big] = 1, 1

    # Scenario 2: compromised terminals. Windows are whole days, so every compromise expands into the
    # (terminal, day) pairs it covers and the handbook's per-day filter becomes one membership test, run
    # only on the few transactions at a terminal that was ever compromised.
    k_t = min(config.n_compromised_terminals_per_day, config.n_terminals)
    compromised_terminals = np.stack(
        [terminal_rng.choice(config.n_terminals, size=k_t, replace=False) for _ in range(n_days)]
    ).astype(np.int64)
    ever = np.zeros(config.n_terminals, dtype=bool)
    ever[compromised_terminals.ravel()] = True
    at_risk = np.flatnonzero(ever[tx["terminal"]])
    span = n_days + config.terminal_compromise_days
    start_day = np.repeat(np.arange(n_days, dtype=np.int64), k_t)
    covered_day = start_day[:, None] + np.arange(config.terminal_compromise_days)[None, :]
    covered = (compromised_terminals.ravel()[:, None] * span + covered_day).ravel()
    hit = at_risk[np.isin(tx["terminal"][at_risk] * span + day[at_risk], covered)]
    fraud[hit], scenario[hit] = 1, 2

    # Scenario 3: compromised customers, one third of their transactions in the window become x5 frauds,
    # sequentially per day as in the handbook (a transaction picked on two days is multiplied twice).
    k_c = min(config.n_compromised_customers_per_day, config.n_customers)
    compromised_customers = np.stack(
        [np.sort(customer_rng.choice(config.n_customers, size=k_c, replace=False)) for _ in range(n_days)]
    ).astype(np.int64)
    # One stolen-credential kit (device) per day's batch; a kit drawn again on another day is what links
    # otherwise unrelated victims in the device graph.
    fraudster_devices = config.n_customers + customer_rng.integers(config.n_fraud_devices, size=n_days)
    # Index the victims' transactions by (customer, day) so each day's candidates are contiguous slices.
    victim_rows = np.flatnonzero(np.isin(tx["customer"], compromised_customers))
    victim_key = tx["customer"][victim_rows] * n_days + day[victim_rows]
    victim_key, by_key = _stable_sort(victim_key, config.n_customers * n_days)
    victim_rows = victim_rows[by_key]
    window = config.customer_compromise_days
    for d in range(n_days):
        chosen = compromised_customers[d]
        first = np.searchsorted(victim_key, chosen * n_days + d)
        last = np.searchsorted(victim_key, chosen * n_days + min(d + window, n_days))
        candidates = np.sort(np.concatenate([victim_rows[a:b] for a, b in zip(first, last, strict=True)]))
        n_frauds = len(candidates) // 3
        if n_frauds == 0:
            continue
        picked = np.sort(customer_rng.choice(candidates, size=n_frauds, replace=False))
        amount[picked] = np.round(amount[picked] * _COMPROMISED_AMOUNT_FACTOR, 2)
        fraud[picked], scenario[picked] = 1, 3
        tx["device"][picked] = fraudster_devices[d]

    return FraudSchedule(compromised_terminals, compromised_customers, fraudster_devices.astype(np.int64))


def _stable_sort(keys: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys and ``np.argsort(keys, kind="stable")`` for non-negative integer keys below ``bound``.

    Packing (key, position) into one int64 makes every value unique, so numpy's fastest unstable sort
    gives the stable order (about 2x faster than the stable argsort, and the sorted keys come free); it
    falls back to the stable argsort when the pair does not fit in 63 bits.
    """
    n = len(keys)
    position_bits = max(1, (n - 1).bit_length())
    if max(1, bound - 1).bit_length() + position_bits > 63:
        order = np.argsort(keys, kind="stable")
        return keys[order], order
    packed = (keys.astype(np.int64) << position_bits) | np.arange(n, dtype=np.int64)
    packed.sort()
    return packed >> position_bits, packed & ((1 << position_bits) - 1)


def _label_availability(
    config: SimulationConfig, tx_datetime: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    mean_us = config.label_delay_days * _US_PER_DAY
    n = len(tx_datetime)
    if config.label_delay == "fixed":
        delay = np.full(n, round(mean_us), dtype=np.int64)
    elif config.label_delay == "exponential":
        delay = np.round(rng.exponential(mean_us, size=n)).astype(np.int64)
    else:
        delay = np.round(rng.uniform(0.0, 2.0 * mean_us, size=n)).astype(np.int64)
    return tx_datetime + delay.astype("timedelta64[us]")


def _tables(
    config: SimulationConfig,
    customers: dict[str, np.ndarray],
    terminals: dict[str, np.ndarray],
    tx: dict[str, np.ndarray],
    available_at: np.ndarray,
) -> dict[str, pa.Table]:
    customer_id = np.arange(config.n_customers, dtype=np.int64)
    transaction_id = np.arange(len(tx["amount"]), dtype=np.int64)
    columns: dict[str, dict[str, np.ndarray | list[str]]] = {
        "customers": {
            "customer_id": customer_id,
            "x": customers["xy"][:, 0].copy(),
            "y": customers["xy"][:, 1].copy(),
            "mean_amount": customers["mean_amount"],
            "std_amount": customers["std_amount"],
            "mean_nb_tx_per_day": customers["mean_nb_tx_per_day"],
            "device_id": customer_id,
            "institution_id": customers["institution_id"],
        },
        "terminals": {
            "terminal_id": np.arange(config.n_terminals, dtype=np.int64),
            "x": terminals["xy"][:, 0].copy(),
            "y": terminals["xy"][:, 1].copy(),
        },
        "transactions": {
            "transaction_id": transaction_id,
            "tx_datetime": tx["datetime"],
            "customer_id": tx["customer"],
            "terminal_id": tx["terminal"],
            "device_id": tx["device"],
            "tx_amount": tx["amount"],
        },
        "fraud_labels": {
            "transaction_id": transaction_id,
            "customer_id": tx["customer"],
            "terminal_id": tx["terminal"],
            "tx_datetime": tx["datetime"],
            "tx_fraud": tx["fraud"],
            "tx_fraud_scenario": tx["scenario"],
            "available_at": available_at,
        },
        "institutions": {
            "institution_id": np.arange(config.n_institutions, dtype=np.int64),
            "name": _institution_names(config.n_institutions),
        },
    }
    return {
        name: pa.Table.from_arrays([_to_arrow(columns[name][f.name], f.type) for f in schema], schema=schema)
        for name, schema in TABLE_SCHEMAS.items()
    }


def _to_arrow(values: np.ndarray | list[str], type_: pa.DataType) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        # Converting datetime64 with an explicit arrow type goes element by element (~0.75 s for 1.8M
        # rows); the int64 view is zero-copy and means the same microseconds.
        return pa.array(values.astype("datetime64[us]").view(np.int64), type=type_)
    return pa.array(values, type=type_)


# --------------------------------------------------------------------------------------------- synthetic region

# A customer's home region, for the fairness segments (design section 9). SYNTHETIC: the handbook's simulator has
# no such attribute, nothing in the generated data depends on it (no fraud scenario, amount or location does), so
# a model can only be unfair on it if it is built to be. Shares are unequal so that segments differ in size.
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
_REGION_SHARES = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
_REGION_SALT = np.uint64(0x7265_6769_6F6E_0001)  # "region" + 1: a fixed key, so regions never change


def customer_region(customer_id: np.ndarray | list[int]) -> np.ndarray:
    """The synthetic home region (one of ``REGIONS``) of each customer id, as a numpy array of str.

    Derived from the id alone by a fixed hash (splitmix64's finaliser), not drawn from the simulation's random
    streams: adding it changed no generated value (every table is byte for byte what it was), the same id has the
    same region in every run, at every scale, and on every path (a training set, a scored request). About 30%,
    25%, 20%, 15% and 10% of the ids fall in north, south, east, west and central."""
    ids = np.asarray(customer_id)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"customer_region: customer ids must be integers, got dtype {ids.dtype}")
    with np.errstate(over="ignore"):
        z = ids.astype(np.int64).view(np.uint64) ^ _REGION_SALT
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    unit = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    index = np.searchsorted(np.cumsum(_REGION_SHARES)[:-1], unit, side="right")
    return np.asarray(REGIONS, dtype=object)[index].astype(str)


# --------------------------------------------------------------------------------------------- helpers


def _institution_names(n: int) -> list[str]:
    names = []
    for i in range(n):
        stem = _NAME_STEMS[i % len(_NAME_STEMS)]
        kind = _NAME_KINDS[(i // len(_NAME_STEMS) + i) % len(_NAME_KINDS)]
        cycle = i // (len(_NAME_STEMS) * len(_NAME_KINDS))
        names.append(f"{stem} {kind}" + (f" {cycle + 1}" if cycle else ""))
    return names


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
