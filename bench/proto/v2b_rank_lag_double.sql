-- As v2_rank_lag but the running sum of amounts is a plain DOUBLE sum (no integer cents): shows the
-- cancellation error of cumulative differences (fails the 1e-9 relative check on zero-sum windows).
-- Running sums + positional lookups, all in ONE window spec (PARTITION BY key ORDER BY ts), so one sort:
--   cum_x  = sum(x) OVER (... ORDER BY ts)            default frame RANGE UNBOUNDED PRECEDING..CURRENT ROW:
--                                                       peer-inclusive, i.e. the same value on tied rows;
--   hi     = rank() - 1                               rows with ts < t (index of the first peer of t);
--   m_w    = count(*) OVER RANGE [t-w, t-1us]          rows with ts in [t-w, t) (rows of the partition);
--   sum of x over rows with ts < t       = lag(cum_x, rn - hi, 0)        (the row just before the peers);
--   sum of x over rows with ts < t - w   = lag(cum_x, rn - hi + m_w, 0).
-- The lag target is always the last row of its peer group, so the result does not depend on how ties are
-- ordered (row_number and lag share the window, hence the same row order). Exact: cum runs over integer
-- cents as DOUBLE (integers below 2^53 add exactly).
-- Customer: spine = events. Terminal: labels UNION ALL spine rows placed at t - 7d (the delayed upper
-- bound), so [t-7d-w, t-7d) is the window [t'-w, t') of the shifted row; the label count per window is
-- a difference of the running label count.
-- @customer_spending
WITH r AS (
  SELECT customer_id, tx_datetime, transaction_id,
    row_number() OVER w AS rn,
    rank() OVER w - 1 AS hi,
    sum(tx_amount) OVER w AS cum_s,
    count(*) OVER (w RANGE BETWEEN INTERVAL 1 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS m1,
    count(*) OVER (w RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS m7,
    count(*) OVER (w RANGE BETWEEN INTERVAL 30 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS m30
  FROM raw.transactions
  WINDOW w AS (PARTITION BY customer_id ORDER BY tx_datetime)
),
l AS (
  SELECT customer_id, tx_datetime, transaction_id, m1, m7, m30,
    lag(cum_s, rn - hi, 0) OVER w AS s0,
    lag(cum_s, rn - hi + m1, 0) OVER w AS s1,
    lag(cum_s, rn - hi + m7, 0) OVER w AS s7,
    lag(cum_s, rn - hi + m30, 0) OVER w AS s30
  FROM r
  WINDOW w AS (PARTITION BY customer_id ORDER BY tx_datetime)
)
SELECT customer_id, tx_datetime AS feature_ts, transaction_id,
  m1 AS tx_count_1d, m7 AS tx_count_7d, m30 AS tx_count_30d,
  (s0 - s1) / nullif(m1, 0) AS avg_amount_1d,
  (s0 - s7) / nullif(m7, 0) AS avg_amount_7d,
  (s0 - s30) / nullif(m30, 0) AS avg_amount_30d
FROM l
;
-- @terminal_risk
WITH timeline AS (
  SELECT terminal_id, tx_datetime AS ts, NULL::BIGINT AS transaction_id, 1 AS is_label, tx_fraud
  FROM raw.fraud_labels WHERE tx_fraud IS NOT NULL
  UNION ALL
  SELECT terminal_id, tx_datetime - INTERVAL 7 DAY, transaction_id, 0, 0 FROM raw.transactions
),
r AS (
  SELECT terminal_id, ts, transaction_id,
    row_number() OVER w AS rn,
    rank() OVER w - 1 AS hi,
    sum(is_label) OVER w AS cum_n,
    sum(tx_fraud) OVER w AS cum_s,
    count(*) OVER (w RANGE BETWEEN INTERVAL 1 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS m1,
    count(*) OVER (w RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS m7,
    count(*) OVER (w RANGE BETWEEN INTERVAL 30 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS m30
  FROM timeline
  WINDOW w AS (PARTITION BY terminal_id ORDER BY ts)
),
l AS (
  SELECT terminal_id, ts, transaction_id,
    lag(cum_n, rn - hi, 0) OVER w AS n0,
    lag(cum_n, rn - hi + m1, 0) OVER w AS n1,
    lag(cum_n, rn - hi + m7, 0) OVER w AS n7,
    lag(cum_n, rn - hi + m30, 0) OVER w AS n30,
    lag(cum_s, rn - hi, 0) OVER w AS s0,
    lag(cum_s, rn - hi + m1, 0) OVER w AS s1,
    lag(cum_s, rn - hi + m7, 0) OVER w AS s7,
    lag(cum_s, rn - hi + m30, 0) OVER w AS s30
  FROM r
  WINDOW w AS (PARTITION BY terminal_id ORDER BY ts)
  QUALIFY transaction_id IS NOT NULL
)
SELECT terminal_id, ts + INTERVAL 7 DAY AS feature_ts, transaction_id,
  n0 - n1 AS tx_count_1d, n0 - n7 AS tx_count_7d, n0 - n30 AS tx_count_30d,
  (s0 - s1) / nullif(n0 - n1, 0) AS fraud_risk_1d,
  (s0 - s7) / nullif(n0 - n7, 0) AS fraud_risk_7d,
  (s0 - s30) / nullif(n0 - n30, 0) AS fraud_risk_30d
FROM l
;
