{# Post-hook of every feature model: a Parquet copy for Feast's offline store (feature_repo/data/). Dispatched on
   the adapter: DuckDB writes the file with COPY; other engines (PostgreSQL) keep the table only, so the hook is
   empty there. #}
{% macro export_feature_table() %}
{{ return(adapter.dispatch('export_feature_table')()) }}
{% endmacro %}

{% macro duckdb__export_feature_table() %}
copy (select * from {{ this }}) to '{{ env_var("TRELLIS_FEATURE_EXPORTS", "../feature_repo/data") }}/{{ this.identifier }}.parquet' (format parquet)
{% endmacro %}

{% macro default__export_feature_table() %}{% endmacro %}
