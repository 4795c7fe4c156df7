-- Customer: as v3_range_us_excl. Terminal: cumulative label tables + positional lookup without a segment
-- tree: pass 1 gives each label the peer-inclusive running {count, fraud sum} of its terminal (default
-- frame); pass 2 puts spine rows at t - 7d into the same timeline and reads, for each bound b in
-- {t', t'-1d, t'-7d, t'-30d}, the running struct of the last label with ts < b via
-- last_value(c IGNORE NULLS) OVER (RANGE BETWEEN UNBOUNDED PRECEDING AND (t'-b)+1us PRECEDING).
-- Integer counts/sums, so differences are exact.
-- @customer_spending
WITH tx AS (SELECT customer_id, tx_datetime, transaction_id, tx_amount, epoch_us(tx_datetime) AS us FROM raw.transactions),
w AS (
  SELECT customer_id, tx_datetime AS feature_ts, transaction_id,
    count(*) OVER w1 AS tx_count_1d, count(*) OVER w7 AS tx_count_7d, count(*) OVER w30 AS tx_count_30d,
    sum(tx_amount) OVER w1 AS s1, sum(tx_amount) OVER w7 AS s7, sum(tx_amount) OVER w30 AS s30
  FROM tx
  WINDOW
    w1 AS (PARTITION BY customer_id ORDER BY us RANGE BETWEEN 86400000000 PRECEDING AND CURRENT ROW EXCLUDE GROUP),
    w7 AS (PARTITION BY customer_id ORDER BY us RANGE BETWEEN 604800000000 PRECEDING AND CURRENT ROW EXCLUDE GROUP),
    w30 AS (PARTITION BY customer_id ORDER BY us RANGE BETWEEN 2592000000000 PRECEDING AND CURRENT ROW EXCLUDE GROUP)
)
SELECT customer_id, feature_ts, transaction_id, tx_count_1d, tx_count_7d, tx_count_30d,
  s1 / nullif(tx_count_1d, 0) AS avg_amount_1d,
  s7 / nullif(tx_count_7d, 0) AS avg_amount_7d,
  s30 / nullif(tx_count_30d, 0) AS avg_amount_30d
FROM w
;
-- @terminal_risk
WITH cum AS (
  SELECT terminal_id, epoch_us(tx_datetime) AS us,
    {'n': count(tx_fraud) OVER w, 's': sum(tx_fraud) OVER w} AS c
  FROM raw.fraud_labels
  WINDOW w AS (PARTITION BY terminal_id ORDER BY tx_datetime)
),
timeline AS (
  SELECT terminal_id, us, NULL::BIGINT AS transaction_id, NULL::TIMESTAMP AS feature_ts, c FROM cum
  UNION ALL
  SELECT terminal_id, epoch_us(tx_datetime) - 604800000000, transaction_id, tx_datetime, NULL FROM raw.transactions
),
l AS (
  SELECT terminal_id, feature_ts, transaction_id,
    last_value(c IGNORE NULLS) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS c0,
    last_value(c IGNORE NULLS) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND 86400000001 PRECEDING) AS c1,
    last_value(c IGNORE NULLS) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND 604800000001 PRECEDING) AS c7,
    last_value(c IGNORE NULLS) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND 2592000000001 PRECEDING) AS c30
  FROM timeline
  WINDOW w AS (PARTITION BY terminal_id ORDER BY us)
  QUALIFY transaction_id IS NOT NULL
),
d AS (
  SELECT terminal_id, feature_ts, transaction_id,
    coalesce(c0.n, 0) - coalesce(c1.n, 0) AS tx_count_1d,
    coalesce(c0.n, 0) - coalesce(c7.n, 0) AS tx_count_7d,
    coalesce(c0.n, 0) - coalesce(c30.n, 0) AS tx_count_30d,
    coalesce(c0.s, 0) - coalesce(c1.s, 0) AS s1,
    coalesce(c0.s, 0) - coalesce(c7.s, 0) AS s7,
    coalesce(c0.s, 0) - coalesce(c30.s, 0) AS s30
  FROM l
)
SELECT terminal_id, feature_ts, transaction_id, tx_count_1d, tx_count_7d, tx_count_30d,
  s1 / nullif(tx_count_1d, 0) AS fraud_risk_1d,
  s7 / nullif(tx_count_7d, 0) AS fraud_risk_7d,
  s30 / nullif(tx_count_30d, 0) AS fraud_risk_30d
FROM d
;
