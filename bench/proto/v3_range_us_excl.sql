-- Same segment-tree RANGE windows as the reference, made cheaper without changing the semantics:
--  * ORDER BY integer epoch microseconds (epoch_us) with integer offsets instead of TIMESTAMP +/- INTERVAL;
--  * [t - w, t) written as RANGE BETWEEN w PRECEDING AND CURRENT ROW EXCLUDE GROUP (one bound search
--    instead of two; EXCLUDE GROUP drops the current row and every row tied with it, i.e. ts < t exactly);
--  * count(*) (no segment tree) and sum()/count instead of avg();
--  * terminal: spine rows enter the timeline at t - 7d, so [t-7d-w, t-7d) is [t'-w, t') like the customer.
-- Values are plain segment-tree sums (no cumulative differences), so no cancellation.
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
WITH timeline AS (
  SELECT terminal_id, epoch_us(tx_datetime) AS us, NULL::BIGINT AS transaction_id, NULL::TIMESTAMP AS feature_ts, tx_fraud
  FROM raw.fraud_labels
  UNION ALL
  SELECT terminal_id, epoch_us(tx_datetime) - 604800000000, transaction_id, tx_datetime, NULL FROM raw.transactions
),
w AS (
  SELECT terminal_id, feature_ts, transaction_id,
    count(tx_fraud) OVER w1 AS tx_count_1d, count(tx_fraud) OVER w7 AS tx_count_7d, count(tx_fraud) OVER w30 AS tx_count_30d,
    sum(tx_fraud) OVER w1 AS s1, sum(tx_fraud) OVER w7 AS s7, sum(tx_fraud) OVER w30 AS s30
  FROM timeline
  WINDOW
    w1 AS (PARTITION BY terminal_id ORDER BY us RANGE BETWEEN 86400000000 PRECEDING AND CURRENT ROW EXCLUDE GROUP),
    w7 AS (PARTITION BY terminal_id ORDER BY us RANGE BETWEEN 604800000000 PRECEDING AND CURRENT ROW EXCLUDE GROUP),
    w30 AS (PARTITION BY terminal_id ORDER BY us RANGE BETWEEN 2592000000000 PRECEDING AND CURRENT ROW EXCLUDE GROUP)
  QUALIFY transaction_id IS NOT NULL
)
SELECT terminal_id, feature_ts, transaction_id, tx_count_1d, tx_count_7d, tx_count_30d,
  s1 / nullif(tx_count_1d, 0) AS fraud_risk_1d,
  s7 / nullif(tx_count_7d, 0) AS fraud_risk_7d,
  s30 / nullif(tx_count_30d, 0) AS fraud_risk_30d
FROM w
;
