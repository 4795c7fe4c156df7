SELECT
  "t2"."customer_id",
  "t2"."feature_ts",
  "t2"."transaction_id",
  COALESCE("t2"."__p_tx_count_1d_n", 0) AS "tx_count_1d",
  COALESCE("t2"."__p_tx_count_7d_n", 0) AS "tx_count_7d",
  COALESCE("t2"."__p_tx_count_30d_n", 0) AS "tx_count_30d",
  "t2"."__p_avg_amount_1d_s" / NULLIF("t2"."__p_avg_amount_1d_n", 0) AS "avg_amount_1d",
  "t2"."__p_avg_amount_7d_s" / NULLIF("t2"."__p_avg_amount_7d_n", 0) AS "avg_amount_7d",
  "t2"."__p_avg_amount_30d_s" / NULLIF("t2"."__p_avg_amount_30d_n", 0) AS "avg_amount_30d",
  CASE
    WHEN "t2"."__p_std_amount_7d_n" >= 2
    THEN SQRT("t2"."__p_std_amount_7d_var")
    ELSE CAST(NULL AS DOUBLE)
  END AS "std_amount_7d",
  CASE
    WHEN "t2"."__p_std_amount_30d_n" >= 2
    THEN SQRT("t2"."__p_std_amount_30d_var")
    ELSE CAST(NULL AS DOUBLE)
  END AS "std_amount_30d",
  "t2"."__p_max_amount_1d_v" AS "max_amount_1d",
  "t2"."__p_max_amount_7d_v" AS "max_amount_7d",
  "t2"."__p_max_amount_30d_v" AS "max_amount_30d",
  COALESCE("t2"."__p_distinct_terminals_1d_v", 0) AS "distinct_terminals_1d",
  COALESCE("t2"."__p_distinct_terminals_7d_v", 0) AS "distinct_terminals_7d",
  COALESCE("t2"."__p_distinct_terminals_30d_v", 0) AS "distinct_terminals_30d"
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
    COUNT("t1"."__in_one") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_tx_count_1d_n",
    COUNT("t1"."__in_one") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_tx_count_7d_n",
    COUNT("t1"."__in_one") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_tx_count_30d_n",
    COUNT("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_avg_amount_1d_n",
    SUM("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_avg_amount_1d_s",
    COUNT("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_avg_amount_7d_n",
    SUM("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_avg_amount_7d_s",
    COUNT("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_avg_amount_30d_n",
    SUM("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_avg_amount_30d_s",
    COUNT("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_std_amount_7d_n",
    AVG("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_std_amount_7d_m",
    VARIANCE("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_std_amount_7d_var",
    COUNT("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_std_amount_30d_n",
    AVG("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_std_amount_30d_m",
    VARIANCE("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_std_amount_30d_var",
    MAX("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_max_amount_1d_v",
    MAX("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_max_amount_7d_v",
    MAX("t1"."__in_tx_amount") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_max_amount_30d_v",
    COUNT(DISTINCT "t1"."__in_terminal_id") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_distinct_terminals_1d_v",
    COUNT(DISTINCT "t1"."__in_terminal_id") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_distinct_terminals_7d_v",
    COUNT(DISTINCT "t1"."__in_terminal_id") OVER (
      PARTITION BY "t1"."customer_id"
      ORDER BY "t1"."__ts" ASC
      RANGE BETWEEN INTERVAL '2592000000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
    ) AS "__p_distinct_terminals_30d_v"
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