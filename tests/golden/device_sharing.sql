SELECT
  "t2"."device_id",
  "t2"."feature_ts",
  "t2"."transaction_id",
  "t2"."distinct_customers_1d",
  "t2"."distinct_customers_7d",
  "t2"."tx_count_7d"
FROM (
  SELECT
    "t1"."transaction_id",
    "t1"."tx_datetime",
    "t1"."customer_id",
    "t1"."terminal_id",
    "t1"."device_id",
    "t1"."tx_amount",
    "t1"."__ts",
    "t1"."__in_customer_id",
    "t1"."__in_one",
    "t1"."feature_ts",
    "t1"."__is_spine",
    COALESCE(
      COUNT(DISTINCT "t1"."__in_customer_id") OVER (
        PARTITION BY "t1"."device_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '86400000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "distinct_customers_1d",
    COALESCE(
      COUNT(DISTINCT "t1"."__in_customer_id") OVER (
        PARTITION BY "t1"."device_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "distinct_customers_7d",
    COALESCE(
      COUNT("t1"."__in_one") OVER (
        PARTITION BY "t1"."device_id"
        ORDER BY "t1"."__ts" ASC
        RANGE BETWEEN INTERVAL '604800000000' MICROSECOND preceding AND INTERVAL '1' MICROSECOND preceding
      ),
      0
    ) AS "tx_count_7d"
  FROM (
    SELECT
      "t0"."transaction_id",
      "t0"."tx_datetime",
      "t0"."customer_id",
      "t0"."terminal_id",
      "t0"."device_id",
      "t0"."tx_amount",
      "t0"."tx_datetime" AS "__ts",
      "t0"."customer_id" AS "__in_customer_id",
      1 AS "__in_one",
      "t0"."tx_datetime" AS "feature_ts",
      TRUE AS "__is_spine"
    FROM validated.transactions AS "t0"
  ) AS "t1"
) AS "t2"
WHERE
  "t2"."__is_spine"