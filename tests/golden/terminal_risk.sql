WITH "t9" AS (
  SELECT
    "t6"."terminal_id",
    "t6"."__ts",
    "t6"."__in_one_d604800",
    "t6"."__in_tx_fraud_d604800",
    "t6"."__is_spine",
    "t6"."feature_ts",
    "t6"."transaction_id",
    "t6"."__spine_row",
    COUNT("t6"."__in_one_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '691200000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_tx_count_1d_n",
    COUNT("t6"."__in_one_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '1209600000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_tx_count_7d_n",
    COUNT("t6"."__in_one_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '3196800000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_tx_count_30d_n",
    COUNT("t6"."__in_tx_fraud_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '691200000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_fraud_risk_1d_n",
    SUM("t6"."__in_tx_fraud_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '691200000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_fraud_risk_1d_s",
    COUNT("t6"."__in_tx_fraud_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '1209600000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_fraud_risk_7d_n",
    SUM("t6"."__in_tx_fraud_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '1209600000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_fraud_risk_7d_s",
    COUNT("t6"."__in_tx_fraud_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '3196800000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_fraud_risk_30d_n",
    SUM("t6"."__in_tx_fraud_d604800") OVER (
      PARTITION BY "t6"."terminal_id"
      ORDER BY "t6"."__ts" ASC
      RANGE BETWEEN INTERVAL '3196800000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
    ) AS "__p_fraud_risk_30d_s"
  FROM (
    SELECT
      "t4"."terminal_id",
      "t4"."__ts",
      "t4"."__in_one_d604800",
      "t4"."__in_tx_fraud_d604800",
      "t4"."__is_spine",
      "t4"."feature_ts",
      "t4"."transaction_id",
      ROW_NUMBER() OVER (ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) - 1 AS "__spine_row"
    FROM (
      SELECT
        *
      FROM (
        SELECT
          "t0"."terminal_id",
          "t0"."tx_datetime" AS "__ts",
          CAST(NULL AS TINYINT) AS "__in_one_d604800",
          CAST(NULL AS INT) AS "__in_tx_fraud_d604800",
          TRUE AS "__is_spine",
          "t0"."tx_datetime" AS "feature_ts",
          "t0"."transaction_id"
        FROM validated.transactions AS "t0"
      ) AS "t2"
      UNION ALL
      SELECT
        *
      FROM (
        SELECT
          "t1"."terminal_id",
          "t1"."tx_datetime" AS "__ts",
          CASE
            WHEN "t1"."available_at" <= (
              "t1"."tx_datetime" + INTERVAL '7' DAY
            )
            THEN 1
            ELSE CAST(NULL AS TINYINT)
          END AS "__in_one_d604800",
          CASE
            WHEN "t1"."available_at" <= (
              "t1"."tx_datetime" + INTERVAL '7' DAY
            )
            THEN "t1"."tx_fraud"
            ELSE CAST(NULL AS INT)
          END AS "__in_tx_fraud_d604800",
          FALSE AS "__is_spine",
          CAST(NULL AS TIMESTAMP) AS "feature_ts",
          CAST(NULL AS BIGINT) AS "transaction_id"
        FROM validated.fraud_labels AS "t1"
      ) AS "t3"
    ) AS "t4"
  ) AS "t6"
)
SELECT
  "t14"."terminal_id",
  "t14"."feature_ts",
  "t14"."transaction_id",
  COALESCE(COALESCE("t14"."__p_tx_count_1d_n", 0) + COALESCE("t17"."__l_tx_count_1d_n", 0), 0) AS "tx_count_1d",
  COALESCE(COALESCE("t14"."__p_tx_count_7d_n", 0) + COALESCE("t17"."__l_tx_count_7d_n", 0), 0) AS "tx_count_7d",
  COALESCE(
    COALESCE("t14"."__p_tx_count_30d_n", 0) + COALESCE("t17"."__l_tx_count_30d_n", 0),
    0
  ) AS "tx_count_30d",
  CASE
    WHEN (
      COALESCE("t14"."__p_fraud_risk_1d_n", 0) + COALESCE("t17"."__l_fraud_risk_1d_n", 0)
    ) > 0
    THEN COALESCE("t14"."__p_fraud_risk_1d_s", 0) + COALESCE("t17"."__l_fraud_risk_1d_s", 0)
    ELSE CAST(NULL AS DOUBLE)
  END / NULLIF(
    COALESCE("t14"."__p_fraud_risk_1d_n", 0) + COALESCE("t17"."__l_fraud_risk_1d_n", 0),
    0
  ) AS "fraud_risk_1d",
  CASE
    WHEN (
      COALESCE("t14"."__p_fraud_risk_7d_n", 0) + COALESCE("t17"."__l_fraud_risk_7d_n", 0)
    ) > 0
    THEN COALESCE("t14"."__p_fraud_risk_7d_s", 0) + COALESCE("t17"."__l_fraud_risk_7d_s", 0)
    ELSE CAST(NULL AS DOUBLE)
  END / NULLIF(
    COALESCE("t14"."__p_fraud_risk_7d_n", 0) + COALESCE("t17"."__l_fraud_risk_7d_n", 0),
    0
  ) AS "fraud_risk_7d",
  CASE
    WHEN (
      COALESCE("t14"."__p_fraud_risk_30d_n", 0) + COALESCE("t17"."__l_fraud_risk_30d_n", 0)
    ) > 0
    THEN COALESCE("t14"."__p_fraud_risk_30d_s", 0) + COALESCE("t17"."__l_fraud_risk_30d_s", 0)
    ELSE CAST(NULL AS DOUBLE)
  END / NULLIF(
    COALESCE("t14"."__p_fraud_risk_30d_n", 0) + COALESCE("t17"."__l_fraud_risk_30d_n", 0),
    0
  ) AS "fraud_risk_30d"
FROM (
  SELECT
    *
  FROM "t9" AS "t10"
  WHERE
    "t10"."__is_spine"
) AS "t14"
LEFT OUTER JOIN (
  SELECT
    "t15"."__spine_row",
    COUNT(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '8' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_tx_count_1d_n",
    COUNT(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '14' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_tx_count_7d_n",
    COUNT(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '37' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_tx_count_30d_n",
    COUNT(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '8' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_1d_n",
    SUM(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '8' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_1d_s",
    COUNT(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '14' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_7d_n",
    SUM(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '14' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_7d_s",
    COUNT(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '37' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_30d_n",
    SUM(
      CASE
        WHEN (
          "t15"."__lts" <= (
            "t15"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t15"."__lts" >= (
            "t15"."__sts" - INTERVAL '37' DAY
          )
        )
        AND (
          "t15"."__lavail" < "t15"."__sts"
        )
        THEN "t15"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_30d_s"
  FROM (
    SELECT
      "t13"."__spine_row",
      "t13"."__skey",
      "t13"."__sts",
      "t8"."transaction_id",
      "t8"."customer_id",
      "t8"."terminal_id",
      "t8"."tx_datetime",
      "t8"."tx_fraud",
      "t8"."tx_fraud_scenario",
      "t8"."available_at",
      "t8"."__lts",
      "t8"."__lavail",
      "t8"."__lkey",
      "t8"."__in_one_d604800_late",
      "t8"."__in_tx_fraud_d604800_late"
    FROM (
      SELECT
        "t10"."__spine_row",
        "t10"."terminal_id" AS "__skey",
        "t10"."__ts" AS "__sts"
      FROM "t9" AS "t10"
      WHERE
        "t10"."__is_spine"
    ) AS "t13"
    INNER JOIN (
      SELECT
        *
      FROM (
        SELECT
          "t1"."transaction_id",
          "t1"."customer_id",
          "t1"."terminal_id",
          "t1"."tx_datetime",
          "t1"."tx_fraud",
          "t1"."tx_fraud_scenario",
          "t1"."available_at",
          "t1"."tx_datetime" AS "__lts",
          "t1"."available_at" AS "__lavail",
          "t1"."terminal_id" AS "__lkey",
          CASE
            WHEN NOT (
              "t1"."available_at" <= (
                "t1"."tx_datetime" + INTERVAL '7' DAY
              )
            )
            THEN 1
            ELSE CAST(NULL AS TINYINT)
          END AS "__in_one_d604800_late",
          CASE
            WHEN NOT (
              "t1"."available_at" <= (
                "t1"."tx_datetime" + INTERVAL '7' DAY
              )
            )
            THEN "t1"."tx_fraud"
            ELSE CAST(NULL AS INT)
          END AS "__in_tx_fraud_d604800_late"
        FROM validated.fraud_labels AS "t1"
      ) AS "t5"
      WHERE
        (
          "t5"."__in_one_d604800_late" IS NOT NULL
        )
        OR (
          "t5"."__in_tx_fraud_d604800_late" IS NOT NULL
        )
    ) AS "t8"
      ON "t13"."__skey" = "t8"."__lkey"
      AND "t8"."__lts" <= (
        "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
      )
      AND "t8"."__lts" >= (
        "t13"."__sts" - INTERVAL '37' DAY
      )
  ) AS "t15"
  GROUP BY
    1
) AS "t17"
  ON "t14"."__spine_row" = "t17"."__spine_row"