SELECT
  "t12"."terminal_id",
  "t12"."feature_ts",
  "t12"."transaction_id",
  COALESCE(COALESCE("t12"."__p_tx_count_1d_n", 0) + COALESCE("t15"."__l_tx_count_1d_n", 0), 0) AS "tx_count_1d",
  COALESCE(COALESCE("t12"."__p_tx_count_7d_n", 0) + COALESCE("t15"."__l_tx_count_7d_n", 0), 0) AS "tx_count_7d",
  COALESCE(
    COALESCE("t12"."__p_tx_count_30d_n", 0) + COALESCE("t15"."__l_tx_count_30d_n", 0),
    0
  ) AS "tx_count_30d",
  CASE
    WHEN (
      COALESCE("t12"."__p_fraud_risk_1d_n", 0) + COALESCE("t15"."__l_fraud_risk_1d_n", 0)
    ) > 0
    THEN COALESCE("t12"."__p_fraud_risk_1d_s", 0) + COALESCE("t15"."__l_fraud_risk_1d_s", 0)
    ELSE CAST(NULL AS DOUBLE)
  END / NULLIF(
    COALESCE("t12"."__p_fraud_risk_1d_n", 0) + COALESCE("t15"."__l_fraud_risk_1d_n", 0),
    0
  ) AS "fraud_risk_1d",
  CASE
    WHEN (
      COALESCE("t12"."__p_fraud_risk_7d_n", 0) + COALESCE("t15"."__l_fraud_risk_7d_n", 0)
    ) > 0
    THEN COALESCE("t12"."__p_fraud_risk_7d_s", 0) + COALESCE("t15"."__l_fraud_risk_7d_s", 0)
    ELSE CAST(NULL AS DOUBLE)
  END / NULLIF(
    COALESCE("t12"."__p_fraud_risk_7d_n", 0) + COALESCE("t15"."__l_fraud_risk_7d_n", 0),
    0
  ) AS "fraud_risk_7d",
  CASE
    WHEN (
      COALESCE("t12"."__p_fraud_risk_30d_n", 0) + COALESCE("t15"."__l_fraud_risk_30d_n", 0)
    ) > 0
    THEN COALESCE("t12"."__p_fraud_risk_30d_s", 0) + COALESCE("t15"."__l_fraud_risk_30d_s", 0)
    ELSE CAST(NULL AS DOUBLE)
  END / NULLIF(
    COALESCE("t12"."__p_fraud_risk_30d_n", 0) + COALESCE("t15"."__l_fraud_risk_30d_n", 0),
    0
  ) AS "fraud_risk_30d"
FROM (
  SELECT
    *
  FROM (
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
      COUNT("t6"."__in_one_d604800") OVER (
        PARTITION BY "t6"."terminal_id"
        ORDER BY "t6"."__ts" ASC
        RANGE BETWEEN INTERVAL '691200000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
      ) AS "__p_fraud_risk_1d_n",
      SUM("t6"."__in_tx_fraud_d604800") OVER (
        PARTITION BY "t6"."terminal_id"
        ORDER BY "t6"."__ts" ASC
        RANGE BETWEEN INTERVAL '691200000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
      ) AS "__p_fraud_risk_1d_s",
      COUNT("t6"."__in_one_d604800") OVER (
        PARTITION BY "t6"."terminal_id"
        ORDER BY "t6"."__ts" ASC
        RANGE BETWEEN INTERVAL '1209600000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
      ) AS "__p_fraud_risk_7d_n",
      SUM("t6"."__in_tx_fraud_d604800") OVER (
        PARTITION BY "t6"."terminal_id"
        ORDER BY "t6"."__ts" ASC
        RANGE BETWEEN INTERVAL '1209600000000' MICROSECOND preceding AND INTERVAL '604800000001' MICROSECOND preceding
      ) AS "__p_fraud_risk_7d_s",
      COUNT("t6"."__in_one_d604800") OVER (
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
        *
      FROM (
        SELECT
          "t0"."terminal_id",
          "t0"."tx_datetime" AS "__ts",
          CAST(NULL AS TINYINT) AS "__in_one_d604800",
          CAST(NULL AS INT) AS "__in_tx_fraud_d604800",
          TRUE AS "__is_spine",
          "t0"."tx_datetime" AS "feature_ts",
          "t0"."transaction_id",
          "t0"."transaction_id" AS "__spine_row"
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
          CAST(NULL AS BIGINT) AS "transaction_id",
          CAST(NULL AS BIGINT) AS "__spine_row"
        FROM validated.fraud_labels AS "t1"
      ) AS "t5"
    ) AS "t6"
  ) AS "t8"
  WHERE
    "t8"."__is_spine"
) AS "t12"
LEFT OUTER JOIN (
  SELECT
    "t13"."__spine_row",
    COUNT(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '8' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_tx_count_1d_n",
    COUNT(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '14' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_tx_count_7d_n",
    COUNT(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '37' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_tx_count_30d_n",
    COUNT(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '8' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_fraud_risk_1d_n",
    SUM(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '8' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_1d_s",
    COUNT(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '14' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_fraud_risk_7d_n",
    SUM(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '14' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_7d_s",
    COUNT(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '37' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_one_d604800_late"
        ELSE CAST(NULL AS TINYINT)
      END
    ) AS "__l_fraud_risk_30d_n",
    SUM(
      CASE
        WHEN (
          "t13"."__lts" <= (
            "t13"."__sts" - INTERVAL '604800000001' MICROSECOND
          )
        )
        AND (
          "t13"."__lts" >= (
            "t13"."__sts" - INTERVAL '37' DAY
          )
        )
        AND (
          "t13"."__lavail" < "t13"."__sts"
        )
        THEN "t13"."__in_tx_fraud_d604800_late"
        ELSE CAST(NULL AS INT)
      END
    ) AS "__l_fraud_risk_30d_s"
  FROM (
    SELECT
      "t4"."__spine_row",
      "t4"."__skey",
      "t4"."__sts",
      "t10"."transaction_id",
      "t10"."customer_id",
      "t10"."terminal_id",
      "t10"."tx_datetime",
      "t10"."tx_fraud",
      "t10"."tx_fraud_scenario",
      "t10"."available_at",
      "t10"."__lts",
      "t10"."__lavail",
      "t10"."__lkey",
      "t10"."__in_one_d604800_late",
      "t10"."__in_tx_fraud_d604800_late"
    FROM (
      SELECT
        "t0"."transaction_id" AS "__spine_row",
        "t0"."terminal_id" AS "__skey",
        "t0"."tx_datetime" AS "__sts"
      FROM validated.transactions AS "t0"
      WHERE
        TRUE
    ) AS "t4"
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
      ) AS "t7"
      WHERE
        (
          "t7"."__in_one_d604800_late" IS NOT NULL
        )
        OR (
          "t7"."__in_tx_fraud_d604800_late" IS NOT NULL
        )
    ) AS "t10"
      ON "t4"."__skey" = "t10"."__lkey"
      AND "t10"."__lts" <= (
        "t4"."__sts" - INTERVAL '604800000001' MICROSECOND
      )
      AND "t10"."__lts" >= (
        "t4"."__sts" - INTERVAL '37' DAY
      )
  ) AS "t13"
  GROUP BY
    1
) AS "t15"
  ON "t12"."__spine_row" = "t15"."__spine_row"