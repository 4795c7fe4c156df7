{# Post-hook of every feature model: a Parquet copy for Feast's offline store (feature_repo/data/). #}
{% macro export_feature_table() %}
copy (select * from {{ this }}) to '{{ env_var("TRELLIS_FEATURE_EXPORTS", "../feature_repo/data") }}/{{ this.identifier }}.parquet' (format parquet)
{% endmacro %}
