SELECT
  "t2"."customer_id",
  "t2"."feature_ts",
  "t2"."transaction_id",
  "t2"."tx_count_1d",
  "t2"."tx_count_7d",
  "t2"."tx_count_30d",
  "t2"."avg_amount_1d",
  "t2"."avg_amount_7d",
  "t2"."avg_amount_30d",
  "t2"."std_amount_7d",
  "t2"."std_amount_30d",
  "t2"."max_amount_1d",
  "t2"."max_amount_7d",
  "t2"."max_amount_30d",
  "t2"."distinct_terminals_1d",
  "t2"."distinct_terminals_7d",
  "t2"."distinct_terminals_30d"
FROM (
  SELECT
    "t1"."transaction_id",
    "t1"."tx_datetime",
    "t1"."customer_id",
    "t1"."terminal_id",
    "t1"."device_id",
    "t1"."tx_amount",
    "t1"."__ts",
    "t1"."__in_one",
    "t1"."__in_tx_amount",
    "t1"."__in_terminal_id",
    "t1"."feature_ts",
    "t1"."__is_spine",
    COALESCE(
      COUNT("t1"."__in_one") OVER (
        PARTITION BY "t1"."customer_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "tx_count_1d",
    COALESCE(
      COUNT("t1"."__in_one") OVER (
        PARTITION BY "t1"."customer_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "tx_count_7d",
    COALESCE(
      COUNT("t1"."__in_one") OVER (
        PARTITION BY "t1"."customer_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "tx_count_30d",
    AVG("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "avg_amount_1d",
    AVG("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "avg_amount_7d",
    AVG("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "avg_amount_30d",
    STDDEV_SAMP("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "std_amount_7d",
    STDDEV_SAMP("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "std_amount_30d",
    MAX("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "max_amount_1d",
    MAX("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "max_amount_7d",
    MAX("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "max_amount_30d",
    COALESCE(
      COUNT(DISTINCT "t1"."__in_terminal_id") OVER (
        PARTITION BY "t1"."customer_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "distinct_terminals_1d",
    COALESCE(
      COUNT(DISTINCT "t1"."__in_terminal_id") OVER (
        PARTITION BY "t1"."customer_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "distinct_terminals_7d",
    COALESCE(
      COUNT(DISTINCT "t1"."__in_terminal_id") OVER (
        PARTITION BY "t1"."customer_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "distinct_terminals_30d"
  FROM (
    SELECT
      "t0"."transaction_id",
      "t0"."tx_datetime",
      "t0"."customer_id",
      "t0"."terminal_id",
      "t0"."device_id",
      "t0"."tx_amount",
      "t0"."tx_datetime" AS "__ts",
      1 AS "__in_one",
      "t0"."tx_amount" AS "__in_tx_amount",
      "t0"."terminal_id" AS "__in_terminal_id",
      "t0"."tx_datetime" AS "feature_ts",
      TRUE AS "__is_spine"
    FROM validated.transactions AS "t0"
  ) AS "t1"
) AS "t2"
WHERE
  "t2"."__is_spine"