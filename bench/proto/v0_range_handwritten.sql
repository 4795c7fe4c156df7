-- Reference: bench_features.handwritten_sql() verbatim (RANGE frames, segment trees).
-- @customer_spending
SELECT customer_id, tx_datetime AS feature_ts, transaction_id,
  count(*) OVER w1 AS tx_count_1d,
  count(*) OVER w7 AS tx_count_7d,
  count(*) OVER w30 AS tx_count_30d,
  avg(tx_amount) OVER w1 AS avg_amount_1d,
  avg(tx_amount) OVER w7 AS avg_amount_7d,
  avg(tx_amount) OVER w30 AS avg_amount_30d
FROM raw.transactions
WINDOW
  w1 AS (PARTITION BY customer_id ORDER BY tx_datetime RANGE BETWEEN INTERVAL 1 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING),
  w7 AS (PARTITION BY customer_id ORDER BY tx_datetime RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING),
  w30 AS (PARTITION BY customer_id ORDER BY tx_datetime RANGE BETWEEN INTERVAL 30 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING)
;
-- @terminal_risk
WITH timeline AS (
  SELECT terminal_id, tx_datetime AS ts, transaction_id, NULL::INTEGER AS tx_fraud
  FROM raw.transactions
  UNION ALL
  SELECT terminal_id, tx_datetime, NULL, tx_fraud FROM raw.fraud_labels
)
SELECT terminal_id, ts AS feature_ts, transaction_id,
  count(tx_fraud) OVER w1 AS tx_count_1d,
  count(tx_fraud) OVER w7 AS tx_count_7d,
  count(tx_fraud) OVER w30 AS tx_count_30d,
  avg(tx_fraud) OVER w1 AS fraud_risk_1d,
  avg(tx_fraud) OVER w7 AS fraud_risk_7d,
  avg(tx_fraud) OVER w30 AS fraud_risk_30d
FROM timeline
WINDOW
  w1 AS (PARTITION BY terminal_id ORDER BY ts RANGE BETWEEN INTERVAL 8 DAY PRECEDING AND INTERVAL '7 days 1 microsecond' PRECEDING),
  w7 AS (PARTITION BY terminal_id ORDER BY ts RANGE BETWEEN INTERVAL 14 DAY PRECEDING AND INTERVAL '7 days 1 microsecond' PRECEDING),
  w30 AS (PARTITION BY terminal_id ORDER BY ts RANGE BETWEEN INTERVAL 37 DAY PRECEDING AND INTERVAL '7 days 1 microsecond' PRECEDING)
QUALIFY transaction_id IS NOT NULL
;
