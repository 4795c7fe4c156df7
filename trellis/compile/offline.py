"""Ibis expressions for feature groups: point-in-time values over a spine, and latest state per entity.

One builder serves every feature shape. Rows are split by the time semantics (``trellis.timesem``):

* **on-time rows** (known by the time they can enter a window, ``available_at <= event_time + delay``) are
  aggregated with range windows over event time. When the spine is the source itself (features at every
  transaction) that is a single windowed pass; otherwise spine rows are unioned in as value-less rows so
  the window sees them in time order (an ASOF-style sweep, no join);
* **late rows** (a label that arrived after the window would have counted it) need both bounds, so they
  are joined to the spine with the two-sided condition and merged into the windowed partial results.
  Only sources that declare ``available_at`` have late rows, and there are few of them.

All SQL for every engine comes from these expressions (``ibis.to_sql(expr, dialect=...)``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import ibis
import ibis.config
import ibis.expr.operations as ops
import ibis.expr.types as ir

from trellis import expr as sqlexpr
from trellis.spec import Feature, FeatureGroup, Project, Source
from trellis.timesem import Bounds, bounds
from trellis.types import mapping

FEATURE_TS = "feature_ts"
_SPINE_FLAG = "__is_spine"
_ROW_ID = "__spine_row"
_PLACEHOLDER = "__trellis_{}__"
_MICROS = "__us"  # event time as integer microseconds since the epoch: the window order key
_ORDER = "__order"  # a row's rank in (event time, available_at, primary key) order: last/first break ties by it
_EPOCH = ibis.timestamp("1970-01-01 00:00:00")


def placeholder(source_name: str) -> str:
    """Name of the unbound table standing for a source in compiled SQL; replaced per target."""
    return _PLACEHOLDER.format(source_name)


def source_table(source: Source) -> ir.Table:
    return ibis.table({n: mapping(c.type).ibis for n, c in source.columns.items()}, name=placeholder(source.name))


_UNITS = (("days", 86_400_000_000), ("hours", 3_600_000_000), ("minutes", 60_000_000), ("seconds", 1_000_000),
          ("microseconds", 1))


def _micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _interval(delta: timedelta) -> ir.IntervalScalar:
    """An interval literal in the coarsest unit that expresses ``delta`` exactly (readable SQL)."""
    micros = _micros(delta)
    name, size = next((u, size) for u, size in _UNITS if micros % size == 0)
    return ibis.interval(**{name: micros // size})


@dataclass(frozen=True)
class WindowSupport:
    """What an engine's window aggregates over a range frame can do. Where one cannot, the compiler writes a
    portable form in two steps (a window column, then a plain expression or a join over it), the same values."""

    distinct: bool  # COUNT(DISTINCT x) OVER; else the frame's values as an array, its distinct elements counted
    pick: bool  # arg_max/arg_min (max_by) OVER; else the frame's edge tie rank, joined to its row for the value


# Run on DuckDB, PostgreSQL and Spark (tests/test_engine_postgres.py, test_engine_spark.py); the others as documented.
WINDOW_SUPPORT = {
    "duckdb": WindowSupport(distinct=True, pick=True),
    "postgres": WindowSupport(distinct=False, pick=False),  # neither DISTINCT nor ORDER BY in window aggregates
    "spark": WindowSupport(distinct=False, pick=True),  # max_by OVER works; DISTINCT windows do not
    "databricks": WindowSupport(distinct=False, pick=True),
    "snowflake": WindowSupport(distinct=False, pick=True),
    "trino": WindowSupport(distinct=False, pick=True),
    "bigquery": WindowSupport(distinct=False, pick=False),
}


class GroupCompiler:
    """Builds the expressions of one feature group for one engine (``dialect``, a key of ``DIALECTS``)."""

    def __init__(self, project: Project, group: FeatureGroup, dialect: str = "duckdb"):
        if dialect not in WINDOW_SUPPORT:
            raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(WINDOW_SUPPORT)}")
        self.project = project
        self.group = group
        self.dialect = dialect
        self.support = WINDOW_SUPPORT[dialect]
        self.source = project.sources[group.source]
        self.key = project.key_column(group)
        self.features: list[Feature] = project.features(group)
        self.late_possible = self.source.available_at is not None
        self.ranks_rows = any(f.agg in ("last", "first") for f in self.features)

    # -- inputs ------------------------------------------------------------------------------------
    def _value(self, src: ir.Table, feature: Feature) -> ir.Value:
        columns = {name: src[name] for name in src.columns}
        if feature.expr is not None:
            value = sqlexpr.to_ibis(sqlexpr.parse(feature.expr), columns)
        elif feature.column is not None:
            value = src[feature.column]
        else:
            value = ibis.literal(1)
        if feature.scale is not None:  # exact: integers in units of 10^-scale (the contract keeps the grid)
            value = (value * 10**feature.scale).round().cast("int64")
        if feature.agg in ("sum", "mean", "std") and value.type().is_boolean():
            value = value.cast("int32").cast("int64")  # PostgreSQL casts a boolean to INTEGER only
        if self.group.filter is not None:
            keep = sqlexpr.to_ibis(sqlexpr.parse(self.group.filter), columns)
            value = ibis.ifelse(keep.fill_null(False), value, ibis.null(value.type()))
        return value

    def _available_at(self, src: ir.Table) -> ir.TimestampValue:
        """When a row became known; a missing value means at its event time (design section 3)."""
        assert self.source.available_at is not None
        event_time = src[self.source.event_time].cast("timestamp")
        return src[self.source.available_at].cast("timestamp").fill_null(event_time)

    def _tie_order(self, src: ir.Table) -> ir.IntegerValue:
        """Each row's rank per entity in (event time, available_at, primary key) order, the order the online
        tail keeps: ``last``/``first`` pick by it, so rows tied in time give the same row on every path (range
        window, late-row join, their merge) and engine. One rank over the whole source, so both paths compare
        the same numbers."""
        order = [src[self.source.event_time].cast("timestamp")]
        if self.source.available_at is not None:
            order.append(self._available_at(src))
        if self.source.primary_key is not None:
            order.append(src[self.source.primary_key])
        return ibis.row_number().over(group_by=src[self.key], order_by=order)

    def _order(self, table: ir.Table) -> ir.IntegerValue | None:
        return table[_ORDER] if self.ranks_rows else None

    def _on_time(self, src: ir.Table, delay: timedelta) -> ir.BooleanValue:
        return self._available_at(src) <= src[self.source.event_time] + _interval(delay)

    def _whole_by_join(self, feature: Feature) -> bool:
        """count_distinct cannot merge partial results, so with late rows it is computed whole by the join."""
        return self.late_possible and feature.agg == "count_distinct"

    def _input_name(self, feature: Feature, late: bool) -> str:
        base = feature.column or (f"expr{zlib.crc32(feature.expr.encode())}" if feature.expr else "one")
        if feature.scale is not None:
            base += f"_e{feature.scale}"
        if self.late_possible:
            base += f"_d{int(feature.delay.total_seconds())}"
            if late:
                base += "_all" if self._whole_by_join(feature) else "_late"
        return f"__in_{base}"

    def _inputs(self, src: ir.Table, late: bool) -> dict[str, ir.Value]:
        """Masked aggregation inputs: on-time rows, or with ``late`` the rows the join must handle."""
        inputs: dict[str, ir.Value] = {}
        needed = list(self.features)
        if self.late_possible:  # shared row counts for the partial states (see _count_feature)
            needed += [c for f in self.features if (c := self._count_feature(f)) is not None]
        for feature in needed:
            name = self._input_name(feature, late=late)
            if name in inputs or (not late and self._whole_by_join(feature)):
                continue
            value = self._value(src, feature)
            if self.late_possible and not (late and self._whole_by_join(feature)):
                on_time = self._on_time(src, feature.delay)
                value = ibis.ifelse(~on_time if late else on_time, value, ibis.null(value.type()))
            inputs[name] = value
        return inputs

    # -- windowed partial aggregates ---------------------------------------------------------------
    def _window(self, table: ir.Table, b: Bounds) -> ibis.expr.builders.LegacyWindowBuilder:
        # Frames over integer microseconds: cheaper for DuckDB to search than TIMESTAMP +/- INTERVAL, and
        # the portable form (BigQuery, for one, only accepts numeric RANGE offsets).
        lower = None if b.lower is None else -_micros(b.lower)
        upper = -_micros(b.upper) if b.upper > timedelta(0) else 0
        return ibis.window(group_by=table[self.key], order_by=table[_MICROS], range=(lower, upper))

    @staticmethod
    def _partials(feature: Feature, value: ir.Value, order: ir.Value | None, w,
                  counter: ir.Value | None = None) -> dict[str, ir.Value]:
        """Mergeable partial state of one feature over a window (or a grouped relation when w is None).
        ``order`` is the rank ``last``/``first`` pick by (``_tie_order``; only they read it); ``counter``,
        when given, counts the same rows as ``value`` (see ``_count_feature``)."""
        over = (lambda e: e.over(w)) if w is not None else (lambda e: e)
        n = over((value if counter is None else counter).count())
        agg = feature.agg
        if agg == "count":
            return {"n": over(value.count())}
        if agg == "count_distinct":
            return {"v": over(value.nunique())}
        if agg in ("sum", "mean"):
            return {"n": n, "s": over(value.sum())}
        if agg == "std" and feature.scale is not None:  # exact integer sums of the values and their squares
            wide = value.cast("decimal(38, 0)")  # a square can pass BIGINT (3.04e9 units: $30M in cents)
            return {"n": n, "s": over(value.sum()), "q": over((wide * wide).sum())}
        if agg == "std":
            return {"n": n, "m": over(value.mean()), "var": over(value.var(how="sample"))}
        if agg in ("min", "max"):
            return {"v": over(value.min() if agg == "min" else value.max())}
        if agg in ("last", "first"):
            assert order is not None, "last/first need the tie order"
            rank = ibis.ifelse(value.notnull(), order, ibis.null(order.type()))
            pick = value.argmax(rank) if agg == "last" else value.argmin(rank)
            edge = rank.max() if agg == "last" else rank.min()
            return {"v": over(pick), "r": over(edge)}
        raise ValueError(f"unknown aggregation {agg!r}")

    @staticmethod
    def _finish(feature: Feature, p: dict[str, ir.Value]) -> ir.Value:
        agg = feature.agg
        out: ir.Value
        if feature.scale is not None:
            out = _exact_finish(agg, p, 10**feature.scale)
        elif agg == "count":
            out = p["n"].fill_null(0)
        elif agg == "sum":
            out = p["s"].fill_null(0)
        elif agg == "mean":
            out = p["s"] / p["n"].nullif(0)
        elif agg == "std":
            out = ibis.ifelse(p["n"] >= 2, p["var"].sqrt(), ibis.null("float64"))
        elif agg == "count_distinct":
            out = p["v"].fill_null(0)
        else:
            out = p["v"]
        return as_declared(out, feature.dtype)

    @staticmethod
    def _merge(feature: Feature, a: dict[str, ir.Value], b: dict[str, ir.Value]) -> dict[str, ir.Value]:
        agg = feature.agg

        def add(x: ir.Value, y: ir.Value) -> ir.Value:
            return x.fill_null(0) + y.fill_null(0)

        if agg == "count":
            return {"n": add(a["n"], b["n"])}
        if feature.scale is not None:  # integer states: sums are exact in any order
            n = add(a["n"], b["n"])
            return {"n": n, **{k: ibis.ifelse(n > 0, add(a[k], b[k]), ibis.null(a[k].type())) for k in a if k != "n"}}
        if agg in ("sum", "mean"):
            return {"n": add(a["n"], b["n"]), "s": ibis.ifelse(add(a["n"], b["n"]) > 0, add(a["s"], b["s"]),
                                                              ibis.null("float64"))}
        if agg == "std":
            # Chan et al.'s parallel update of (n, mean, M2).
            na, nb = a["n"].fill_null(0).cast("float64"), b["n"].fill_null(0).cast("float64")
            n = na + nb
            ma, mb = a["m"].fill_null(0), b["m"].fill_null(0)
            m2 = (a["var"].fill_null(0) * (na - 1).clip(lower=0) + b["var"].fill_null(0) * (nb - 1).clip(lower=0)
                  + (mb - ma) * (mb - ma) * na * nb / n.nullif(0))
            return {"n": n, "m": (ma * na + mb * nb) / n.nullif(0), "var": m2 / (n - 1).nullif(0)}
        if agg == "count_distinct":
            return b
        if agg in ("min", "max"):
            pick = ibis.least if agg == "min" else ibis.greatest
            return {"v": pick(a["v"].fill_null(b["v"]), b["v"].fill_null(a["v"]))}
        if agg in ("last", "first"):
            # Ranks are distinct (one per source row), so a tie in time is settled here as in the window.
            b_wins = b["r"].notnull() & (a["r"].isnull() | ((b["r"] > a["r"]) if agg == "last" else (b["r"] < a["r"])))
            return {"v": ibis.ifelse(b_wins, b["v"], a["v"]), "r": ibis.ifelse(b_wins, b["r"], a["r"])}
        raise ValueError(f"aggregation {agg!r} cannot merge partial results")

    # -- public builders ---------------------------------------------------------------------------
    def spine_from_source(self) -> ir.Table:
        """The default spine: the spine source's events (key, time and primary key)."""
        spine_source = self.project.spine_of(self.group)
        src = source_table(spine_source)
        columns = {self.key: src[self.key], FEATURE_TS: src[spine_source.event_time]}
        if spine_source.primary_key:
            columns[spine_source.primary_key] = src[spine_source.primary_key]
        return src.select(**columns)

    def point_in_time(self, spine: ir.Table | None = None, src: ir.Table | None = None) -> ir.Table:
        """Feature values for every spine row ``(key, feature_ts, *passthrough)``, exact under section 3.

        With no spine, the group's own spine source is used; when that is the source itself, features are
        computed in one windowed pass over it."""
        src = source_table(self.source) if src is None else src
        if self.ranks_rows:
            src = src.mutate(**{_ORDER: self._tie_order(src)})
        default_spine = spine is None
        self_spine = default_spine and self.project.spine_of(self.group).name == self.source.name
        spine = self.spine_from_source() if spine is None else spine
        passthrough = [c for c in spine.columns if c not in (self.key, FEATURE_TS)]
        primary_key = self.project.spine_of(self.group).primary_key if default_spine else None

        inputs = self._inputs(src, late=False)
        if self.ranks_rows:  # carried like an input: null on the union's spine rows
            inputs[_ORDER] = src[_ORDER]
        events = src.mutate(__ts=src[self.source.event_time].cast("timestamp"), **inputs)
        if self_spine:
            spine_rows = events.mutate(**{FEATURE_TS: events["__ts"], _SPINE_FLAG: ibis.literal(True)})
        else:
            spine_rows = spine.mutate(__ts=spine[FEATURE_TS].cast("timestamp"), **{_SPINE_FLAG: ibis.literal(True)})
        if self.late_possible:
            # Late rows are joined back per spine row: number the spine alone (or use its unique key).
            # Ordered so that every engine numbers rows alike; rows sharing (key, time) get equal features.
            row_id = spine_rows[primary_key] if primary_key else ibis.row_number().over(
                order_by=[spine_rows[self.key], spine_rows["__ts"]])
            spine_rows = spine_rows.mutate(**{_ROW_ID: row_id})
        if self_spine:
            timeline = spine_rows
        else:
            row_id = [_ROW_ID] if self.late_possible else []
            spine_rows = spine_rows.mutate(**{n: ibis.null(events[n].type()) for n in inputs})
            spine_rows = spine_rows.select(self.key, "__ts", *inputs, _SPINE_FLAG, FEATURE_TS, *passthrough, *row_id)
            event_rows = events.select(
                self.key, "__ts", *inputs,
                **{_SPINE_FLAG: ibis.literal(False), FEATURE_TS: ibis.null("timestamp")},
                **{c: ibis.null(spine[c].type()) for c in passthrough},
                **{c: ibis.null(spine_rows[c].type()) for c in row_id},
            )
            timeline = spine_rows.union(event_rows)
        timeline = timeline.mutate(**{_MICROS: timeline["__ts"].delta(_EPOCH, unit="microsecond")})
        keep = [self.key, FEATURE_TS, *passthrough]

        if not self.late_possible:
            # Every row is on time: the windows give the final values directly. Exact aggregates first get
            # their integer sums as columns, one per (input, window, sum): a mean and a std over the same
            # window share them.
            sums: dict[str, ir.Value] = {}
            exact: dict[str, dict[str, str]] = {}
            for feature in (f for f in self.features if f.scale is not None):
                b = bounds(feature.window, feature.delay, self.group.include_current)
                frame = f"{'all' if b.lower is None else _micros(b.lower)}_{_micros(b.upper)}"
                name = self._input_name(feature, late=False)
                parts = self._partials(feature, timeline[name], None, self._window(timeline, b))
                exact[feature.name] = {k: f"__x{name}_{frame}_{k}" for k in parts}
                sums.update({exact[feature.name][k]: v for k, v in parts.items()})
            timeline = timeline.mutate(**sums) if sums else timeline
            finals = {}
            first_steps: dict[str, ir.Value] = {}
            for feature in self.features:
                if feature.name in exact:
                    finals[feature.name] = self._finish(feature, {k: timeline[c] for k, c in exact[feature.name].items()})
                    continue
                w = self._window(timeline, bounds(feature.window, feature.delay, self.group.include_current))
                value = timeline[self._input_name(feature, late=False)]
                if self._two_step(feature):
                    first_steps[f"__w_{feature.name}"] = self._first_step(feature, value, self._order(timeline), w)
                    continue
                finals[feature.name] = self._direct(feature, value, self._order(timeline), w)
            if not first_steps:
                return timeline.mutate(**finals).filter(timeline[_SPINE_FLAG]).select(*keep, *finals)
            table = timeline.mutate(**finals, **first_steps).filter(timeline[_SPINE_FLAG])
            table, states = self._second_steps(table, events, {
                f.name: (f"__w_{f.name}", f"__v_{f.name}") for f in self.features if f"__w_{f.name}" in first_steps})
            return table.select(*keep, **{f.name: self._finish(f, states[f.name]) if f.name in states else table[f.name]
                                          for f in self.features})

        partial_cols: dict[str, ir.Value] = {}
        for feature in self.features:
            if self._whole_by_join(feature):
                continue  # not mergeable: computed whole by the join below (it has no on-time input)
            w = self._window(timeline, bounds(feature.window, feature.delay, self.group.include_current))
            value = timeline[self._input_name(feature, late=False)]
            order = self._order(timeline)
            if self._two_step(feature):  # last/first (count_distinct with late rows is whole by the join)
                partial_cols[f"__p_{feature.name}_r"] = self._first_step(feature, value, order, w)
                continue
            for k, v in self._partials(feature, value, order, w, self._counter(timeline, feature)).items():
                partial_cols[f"__p_{feature.name}_{k}"] = v
        windowed = timeline.mutate(**partial_cols).filter(timeline[_SPINE_FLAG])
        two_step = {f.name: (f"__p_{f.name}_r", f"__p_{f.name}_v") for f in self.features
                    if self._two_step(f) and not self._whole_by_join(f)}
        if two_step:
            windowed, _ = self._second_steps(windowed, events, two_step)
        late = self._late_partials(spine_rows.filter(spine_rows[_SPINE_FLAG]), src)
        joined = windowed.left_join(late, windowed[_ROW_ID] == late[_ROW_ID])
        out = {}
        for feature in self.features:
            a = self._partial_dict(joined, feature)
            b = {k[len(f"__l_{feature.name}_"):]: joined[k] for k in late.columns
                 if k.startswith(f"__l_{feature.name}_")}
            out[feature.name] = self._finish(feature, self._merge(feature, a, b))
        return joined.select(*keep, **out)

    # -- two-step forms, for engines without some window aggregates (WindowSupport) ---------------------
    def _two_step(self, feature: Feature) -> bool:
        if feature.agg == "count_distinct":
            return not self.support.distinct
        return feature.agg in ("last", "first") and not self.support.pick

    @staticmethod
    def _first_step(feature: Feature, value: ir.Value, order: ir.Value | None, w) -> ir.Value:
        """The window column of a two-step feature: the frame's non-null values (count_distinct), or the tie
        rank of the frame's last/first non-null value (the partial state ``r``)."""
        if feature.agg == "count_distinct":
            return value.collect().over(w)
        assert order is not None, "last/first need the tie order"
        rank = ibis.ifelse(value.notnull(), order, ibis.null(order.type()))
        return (rank.max() if feature.agg == "last" else rank.min()).over(w)

    def _second_steps(self, table: ir.Table, events: ir.Table,
                      steps: dict[str, tuple[str, str]]) -> tuple[ir.Table, dict[str, dict[str, ir.Value]]]:
        """Partial states of two-step features from their window columns (``steps``: feature name -> (window
        column, value column to add)). A frame's distinct values are counted in a select over the window's
        (an engine evaluates a window inside a subquery at the subquery's level). A last/first value is that of
        the source row holding the edge rank: ranks are unique per entity, so a join on (entity, rank) finds
        that one row, whose input is not null by the rank's definition."""
        two_step = [f for f in self.features if f.name in steps]
        for feature in (f for f in two_step if f.agg in ("last", "first")):
            window_column, value_column = steps[feature.name]
            lookup = events.select(__pick_key=events[self.key], __pick_rank=events[_ORDER],
                                   __pick_value=events[self._input_name(feature, late=False)]).view()
            joined = table.left_join(lookup, [table[self.key] == lookup["__pick_key"],
                                              table[window_column] == lookup["__pick_rank"]])
            table = joined.select(*table.columns, **{value_column: joined["__pick_value"]})
        states: dict[str, dict[str, ir.Value]] = {}
        for feature in two_step:
            window_column, value_column = steps[feature.name]
            states[feature.name] = ({"v": table[window_column].unique().length()} if feature.agg == "count_distinct"
                                    else {"v": table[value_column], "r": table[window_column]})
        return table, states

    def _direct(self, feature: Feature, value: ir.Value, order: ir.Value | None, w) -> ir.Value:
        """A feature's final value from one window (no partial state to merge)."""
        agg = feature.agg
        if agg == "mean":
            out = value.mean().over(w)
        elif agg == "std":
            out = value.std(how="sample").over(w)
        elif agg == "sum":
            out = value.sum().over(w).fill_null(0)
        else:
            return self._finish(feature, self._partials(feature, value, order, w))
        return as_declared(out, feature.dtype)

    def _count_feature(self, feature: Feature) -> Feature | None:
        """The row-count input this feature's count may share: when its column can never be null and no
        expression is involved, counting the column equals counting rows (one window aggregate less)."""
        column = self.source.columns.get(feature.column) if feature.column else None
        if feature.agg not in ("sum", "mean", "std") or column is None or not column.checks.not_null:
            return None
        return feature.model_copy(update={"agg": "count", "column": None, "expr": None})

    def _counter(self, table: ir.Table, feature: Feature, late: bool = False) -> ir.Value | None:
        counter = self._count_feature(feature)
        return None if counter is None else table[self._input_name(counter, late=late)]

    def _partial_dict(self, table: ir.Table, feature: Feature) -> dict[str, ir.Value]:
        prefix = f"__p_{feature.name}_"
        return {c[len(prefix):]: table[c] for c in table.columns if c.startswith(prefix)}

    def _late_partials(self, spine: ir.Table, src: ir.Table) -> ir.Table:
        """Partial aggregates of late rows, per spine row, by a join with both time bounds."""
        late_inputs = self._inputs(src, late=True)
        late = src.mutate(__lts=src[self.source.event_time].cast("timestamp"),
                          __lavail=self._available_at(src),
                          __lkey=src[self.key], **late_inputs)
        late = late.filter(ibis.or_(*[late[n].notnull() for n in late_inputs]))
        left = spine.select(_ROW_ID, __skey=spine[self.key], __sts=spine["__ts"])
        # Every feature's condition is a subset of the loosest one; narrow per feature with masks below.
        loosest = max((bounds(f.window, f.delay, self.group.include_current) for f in self.features),
                      key=lambda b: (b.lower is None, b.lower or timedelta(0)))
        cond = [left["__skey"] == late["__lkey"], late["__lts"] <= left["__sts"] - _interval(min(
            bounds(f.window, f.delay, self.group.include_current).upper for f in self.features))]
        if loosest.lower is not None:
            cond.append(late["__lts"] >= left["__sts"] - _interval(loosest.lower))
        pairs = left.join(late, cond)
        aggregates = {}
        for feature in self.features:
            b = bounds(feature.window, feature.delay, self.group.include_current)
            inside = pairs["__lts"] <= pairs["__sts"] - _interval(b.upper)
            if b.lower is not None:
                inside &= pairs["__lts"] >= pairs["__sts"] - _interval(b.lower)
            inside &= (pairs["__lavail"] < pairs["__sts"]) if b.availability_strict else (
                pairs["__lavail"] <= pairs["__sts"])
            def masked(column: ir.Value, inside: ir.BooleanValue = inside) -> ir.Value:
                return ibis.ifelse(inside, column, ibis.null(column.type()))

            value = masked(pairs[self._input_name(feature, late=True)])
            counter = self._counter(pairs, feature, late=True)
            counter = None if counter is None else masked(counter)
            order = self._order(pairs)
            for k, v in self._partials(feature, value, order, None, counter).items():
                aggregates[f"__l_{feature.name}_{k}"] = v
        return pairs.group_by(_ROW_ID).aggregate(**aggregates)

    def latest(self, as_of: datetime, src: ir.Table | None = None) -> ir.Table:
        """Every entity's feature values as of ``as_of`` (what the online store serves at that time)."""
        src = source_table(self.source) if src is None else src
        spine = src.select(self.key).distinct().mutate(**{FEATURE_TS: ibis.literal(as_of, type="timestamp")})
        return self.point_in_time(spine=spine, src=src)


def as_declared(value: ir.Value, logical: str) -> ir.Value:
    """``value`` cast to a feature's declared type, the cast always written in the SQL. Ibis leaves out a cast to
    the type it infers, and engines return other types than it infers: DuckDB's SUM of integers is HUGEINT (Ibis
    says int64), MIN of an int32 expression INTEGER (the definition declares int64). The cast makes every engine
    return the type the dbt contract, the Pandera schema and the Feast view declare."""
    return ops.Cast(value, to=mapping(logical).ibis).to_expr()


def _exact_finish(agg: str, p: dict[str, ir.Value], factor: int) -> ir.Value:
    """sum, mean or std from exact integer sums ``s`` (values times ``factor``), ``q`` (their squares) and the
    count ``n``. Each is one or two roundings of exact quantities, in this order, so that
    ``trellis.online.state`` computes the same bits in Python."""
    s = p["s"].cast("float64")
    if agg == "sum":
        return (s / factor).fill_null(0)
    n = p["n"]
    if agg == "mean":
        return s / (n * factor).nullif(0).cast("float64")
    if agg == "std":  # (n q - s^2) / (n (n - 1)) is the sample variance; its numerator is exact
        spread = (n * p["q"] - p["s"] * p["s"]).cast("float64") / (n * (n - 1)).cast("float64")
        return ibis.ifelse(n >= 2, spread.sqrt() / factor, ibis.null("float64"))
    raise ValueError(f"aggregation {agg!r} is not computed exactly")


class _SparkOptions(ibis.config.Config):
    treat_nan_as_null: bool = False


# Engines the compiled SQL targets: our name -> Ibis compiler name.
DIALECTS = {"duckdb": "duckdb", "spark": "pyspark", "databricks": "databricks", "snowflake": "snowflake",
            "bigquery": "bigquery", "trino": "trino", "postgres": "postgres"}


def to_sql(expr: ir.Table, relations: dict[str, str], dialect: str = "duckdb") -> str:
    """SQL for ``expr`` with each source placeholder replaced by a relation (table name, ref(), file)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    if dialect == "spark" and ibis.options.pyspark is None:
        ibis.options.pyspark = _SparkOptions()  # normally registered by importing pyspark, not needed to compile
    return with_relations(str(ibis.to_sql(expr, dialect=DIALECTS[dialect])), relations, dialect)


def with_relations(sql: str, relations: dict[str, str], dialect: str = "duckdb") -> str:
    """``to_sql``'s second half: SQL that Ibis compiled for ``dialect`` (placeholders still in it) made ready for
    the engine, each placeholder replaced by its relation. Lets one compilation serve several relation maps."""
    if dialect in ("spark", "databricks"):
        sql = _naive_timestamps(sql, dialect)
    for source_name, relation in relations.items():
        quoted = {"bigquery": "`{}`", "databricks": "`{}`", "spark": "`{}`"}.get(dialect, '"{}"')
        sql = sql.replace(quoted.format(placeholder(source_name)), relation)
    return str(sql)


def _naive_timestamps(sql: str, dialect: str) -> str:
    """Spark's TIMESTAMP is zone-aware: a cast to it (``CAST(NULL AS TIMESTAMP)`` in a union branch, a declared
    timestamp feature, the epoch of the window order key) reads a naive value in the session time zone, so results
    would move with it. Trellis' timestamps are naive UTC: TIMESTAMP_NTZ. And Spark's DATEDIFF(MICROSECOND, ...) goes
    through the session time zone even between TIMESTAMP_NTZ values (2024-03-10 02:20 in America/New_York, a time
    the DST change skips, comes out an hour late), so the window order key is computed from the value's fields."""
    import sqlglot
    from sqlglot import exp

    read = "spark" if dialect == "spark" else "databricks"
    zoned = (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.TIMESTAMPLTZ)

    def naive(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.DataType) and node.this in zoned:
            return exp.DataType.build("TIMESTAMP_NTZ", dialect="spark")
        return node

    def micros(value: exp.Expression) -> str:
        """Microseconds since the epoch of a TIMESTAMP_NTZ, from its date and time-of-day fields (zone-free)."""
        if isinstance(value, exp.TsOrDsToDate):  # how sqlglot reads DATEDIFF's arguments back
            value = value.this
        x = value.sql(dialect=read)
        return (f"(CAST(UNIX_DATE(CAST({x} AS DATE)) AS BIGINT) * 86400000000 + CAST(HOUR({x}) AS BIGINT) * "
                f"3600000000 + CAST(MINUTE({x}) AS BIGINT) * 60000000 + CAST(EXTRACT(SECOND FROM {x}) * 1000000 AS "
                f"BIGINT))")

    def verbatim(node: exp.Expression) -> exp.Expression:
        # sqlglot writes UNIX_DATE(d) for Spark as DATEDIFF(DAY, '1970-01-01', d), which is zone-aware again.
        return exp.Anonymous(this="UNIX_DATE", expressions=[node.this]) if isinstance(node, exp.UnixDate) else node

    def field_micros(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.DateDiff) and node.unit is not None and node.unit.name.upper() == "MICROSECOND":
            return sqlglot.parse_one(f"({micros(node.this)} - {micros(node.expression)})", read=read).transform(verbatim)
        return node

    tree = sqlglot.parse_one(sql, read=read).transform(naive).transform(field_micros)
    return tree.sql(dialect=read, pretty=True)
