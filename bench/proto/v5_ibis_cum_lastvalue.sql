-- Ibis-expressible form of v4 (Ibis 12 emits neither EXCLUDE GROUP nor IGNORE NULLS; both verified):
--  * customer: RANGE frames over integer epoch_us, [t-w, t) as "w PRECEDING AND 1 PRECEDING", count/sum;
--  * terminal: one timeline of labels and spine rows (spine at t' = t - 7d) ordered by the integer
--    o = 2*us + is_label, so a spine row sorts before labels at the same instant. Pass 1: peer-inclusive
--    running {label count, fraud sum} on every row (at a spine row: labels with ts < t' exactly).
--    Pass 2: last_value of it over RANGE BETWEEN UNBOUNDED PRECEDING AND 2w+1 PRECEDING = the running
--    value of the last row with o <= 2(t'-w) - 1, i.e. labels with ts < t' - w. Values are constant over
--    peers, so the lookup is deterministic. Integer counts/sums: exact differences.
-- @customer_spending
WITH tx AS (SELECT customer_id, tx_datetime, transaction_id, tx_amount, epoch_us(tx_datetime) AS us FROM raw.transactions),
w AS (
  SELECT customer_id, tx_datetime AS feature_ts, transaction_id,
    count(*) OVER w1 AS tx_count_1d, count(*) OVER w7 AS tx_count_7d, count(*) OVER w30 AS tx_count_30d,
    sum(tx_amount) OVER w1 AS s1, sum(tx_amount) OVER w7 AS s7, sum(tx_amount) OVER w30 AS s30
  FROM tx
  WINDOW
    w1 AS (PARTITION BY customer_id ORDER BY us RANGE BETWEEN 86400000000 PRECEDING AND 1 PRECEDING),
    w7 AS (PARTITION BY customer_id ORDER BY us RANGE BETWEEN 604800000000 PRECEDING AND 1 PRECEDING),
    w30 AS (PARTITION BY customer_id ORDER BY us RANGE BETWEEN 2592000000000 PRECEDING AND 1 PRECEDING)
)
SELECT customer_id, feature_ts, transaction_id, tx_count_1d, tx_count_7d, tx_count_30d,
  s1 / nullif(tx_count_1d, 0) AS avg_amount_1d,
  s7 / nullif(tx_count_7d, 0) AS avg_amount_7d,
  s30 / nullif(tx_count_30d, 0) AS avg_amount_30d
FROM w
;
-- @terminal_risk
WITH timeline AS (
  SELECT terminal_id, 2 * epoch_us(tx_datetime) + 1 AS o, NULL::BIGINT AS transaction_id,
    NULL::TIMESTAMP AS feature_ts, 1 AS il, tx_fraud
  FROM raw.fraud_labels WHERE tx_fraud IS NOT NULL
  UNION ALL
  SELECT terminal_id, 2 * (epoch_us(tx_datetime) - 604800000000), transaction_id, tx_datetime, 0, 0
  FROM raw.transactions
),
cum AS (
  SELECT terminal_id, o, transaction_id, feature_ts,
    {'n': sum(il) OVER w, 's': sum(tx_fraud) OVER w} AS c
  FROM timeline
  WINDOW w AS (PARTITION BY terminal_id ORDER BY o)
),
l AS (
  SELECT terminal_id, feature_ts, transaction_id, c AS c0,
    last_value(c) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND 172800000001 PRECEDING) AS c1,
    last_value(c) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND 1209600000001 PRECEDING) AS c7,
    last_value(c) OVER (w RANGE BETWEEN UNBOUNDED PRECEDING AND 5184000000001 PRECEDING) AS c30
  FROM cum
  WINDOW w AS (PARTITION BY terminal_id ORDER BY o)
  QUALIFY transaction_id IS NOT NULL
),
d AS (
  SELECT terminal_id, feature_ts, transaction_id,
    c0.n - coalesce(c1.n, 0) AS tx_count_1d,
    c0.n - coalesce(c7.n, 0) AS tx_count_7d,
    c0.n - coalesce(c30.n, 0) AS tx_count_30d,
    c0.s - coalesce(c1.s, 0) AS s1,
    c0.s - coalesce(c7.s, 0) AS s7,
    c0.s - coalesce(c30.s, 0) AS s30
  FROM l
)
SELECT terminal_id, feature_ts, transaction_id, tx_count_1d, tx_count_7d, tx_count_30d,
  s1 / nullif(tx_count_1d, 0) AS fraud_risk_1d,
  s7 / nullif(tx_count_7d, 0) AS fraud_risk_7d,
  s30 / nullif(tx_count_30d, 0) AS fraud_risk_30d
FROM d
;
