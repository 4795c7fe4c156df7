-- Cumulative sums + ASOF joins. Per key, events are grouped by timestamp (so ties collapse into one row) and
-- given inclusive running count / sum (ROWS UNBOUNDED PRECEDING: a single streaming pass per partition).
-- "events with ts < x" is the running value of the last group with ts < x: ASOF LEFT JOIN ... AND x > ev.ts
-- (strict, so ties at a bound are handled exactly). Window value = cum(t - d) - cum(t - d - w).
-- Sums of amounts run in BIGINT cents (amounts have 2 decimals) so differences are exact.
-- @customer_spending
WITH ev AS (
  SELECT customer_id, ts,
    sum(n) OVER w AS cn,
    sum(s) OVER w AS cs
  FROM (
    SELECT customer_id, tx_datetime AS ts, count(*) AS n, sum(round(tx_amount * 100)::BIGINT) AS s
    FROM raw.transactions GROUP BY customer_id, tx_datetime
  )
  WINDOW w AS (PARTITION BY customer_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
sp AS (
  SELECT customer_id, tx_datetime, transaction_id,
    tx_datetime - INTERVAL 1 DAY AS b1, tx_datetime - INTERVAL 7 DAY AS b7, tx_datetime - INTERVAL 30 DAY AS b30
  FROM raw.transactions
),
j AS (
  SELECT sp.customer_id, sp.tx_datetime AS feature_ts, sp.transaction_id,
    coalesce(u.cn, 0) AS un, coalesce(u.cs, 0) AS us,
    coalesce(l1.cn, 0) AS n1, coalesce(l1.cs, 0) AS s1,
    coalesce(l7.cn, 0) AS n7, coalesce(l7.cs, 0) AS s7,
    coalesce(l30.cn, 0) AS n30, coalesce(l30.cs, 0) AS s30
  FROM sp
  ASOF LEFT JOIN ev u ON sp.customer_id = u.customer_id AND sp.tx_datetime > u.ts
  ASOF LEFT JOIN ev l1 ON sp.customer_id = l1.customer_id AND sp.b1 > l1.ts
  ASOF LEFT JOIN ev l7 ON sp.customer_id = l7.customer_id AND sp.b7 > l7.ts
  ASOF LEFT JOIN ev l30 ON sp.customer_id = l30.customer_id AND sp.b30 > l30.ts
)
SELECT customer_id, feature_ts, transaction_id,
  un - n1 AS tx_count_1d, un - n7 AS tx_count_7d, un - n30 AS tx_count_30d,
  (us - s1) / 100 / nullif(un - n1, 0) AS avg_amount_1d,
  (us - s7) / 100 / nullif(un - n7, 0) AS avg_amount_7d,
  (us - s30) / 100 / nullif(un - n30, 0) AS avg_amount_30d
FROM j
;
-- @terminal_risk
WITH ev AS (
  SELECT terminal_id, ts,
    sum(n) OVER w AS cn,
    sum(s) OVER w AS cs
  FROM (
    SELECT terminal_id, tx_datetime AS ts, count(tx_fraud) AS n, sum(tx_fraud) AS s
    FROM raw.fraud_labels GROUP BY terminal_id, tx_datetime
  )
  WINDOW w AS (PARTITION BY terminal_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
sp AS (
  SELECT terminal_id, tx_datetime, transaction_id,
    tx_datetime - INTERVAL 7 DAY AS b0, tx_datetime - INTERVAL 8 DAY AS b1,
    tx_datetime - INTERVAL 14 DAY AS b7, tx_datetime - INTERVAL 37 DAY AS b30
  FROM raw.transactions
),
j AS (
  SELECT sp.terminal_id, sp.tx_datetime AS feature_ts, sp.transaction_id,
    coalesce(u.cn, 0) AS un, coalesce(u.cs, 0) AS us,
    coalesce(l1.cn, 0) AS n1, coalesce(l1.cs, 0) AS s1,
    coalesce(l7.cn, 0) AS n7, coalesce(l7.cs, 0) AS s7,
    coalesce(l30.cn, 0) AS n30, coalesce(l30.cs, 0) AS s30
  FROM sp
  ASOF LEFT JOIN ev u ON sp.terminal_id = u.terminal_id AND sp.b0 > u.ts
  ASOF LEFT JOIN ev l1 ON sp.terminal_id = l1.terminal_id AND sp.b1 > l1.ts
  ASOF LEFT JOIN ev l7 ON sp.terminal_id = l7.terminal_id AND sp.b7 > l7.ts
  ASOF LEFT JOIN ev l30 ON sp.terminal_id = l30.terminal_id AND sp.b30 > l30.ts
)
SELECT terminal_id, feature_ts, transaction_id,
  un - n1 AS tx_count_1d, un - n7 AS tx_count_7d, un - n30 AS tx_count_30d,
  (us - s1) / nullif(un - n1, 0) AS fraud_risk_1d,
  (us - s7) / nullif(un - n7, 0) AS fraud_risk_7d,
  (us - s30) / nullif(un - n30, 0) AS fraud_risk_30d
FROM j
;
