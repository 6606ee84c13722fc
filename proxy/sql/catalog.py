"""Static allowlists the policy checks names against (catalog form: lower case).

Everything here is an allowlist: a name that is missing is refused. Names are compared
after pglast has folded case, decoded U& escapes and truncated to 63 bytes, so
`"SET_CONFIG"` is simply an unknown (refused) function and `U&"\\0073et_config"` is
`set_config`.
"""

from __future__ import annotations

# pg_catalog relations drivers and ORMs read at connect time or for type introspection
# (asyncpg, psycopg TypeInfo, SQLAlchemy has_table, Django get_type_oids). In shared
# databases pg_class/pg_namespace/pg_attribute still show other tenants' metadata
# (THREATS 22 residual risk); filtering them is a later rewrite.
CATALOG_ALLOWLIST = frozenset({
    "pg_type", "pg_range", "pg_enum", "pg_namespace", "pg_attribute", "pg_class",
    "pg_index", "pg_attrdef", "pg_constraint", "pg_collation", "pg_am",
})

_MATH = """abs cbrt ceil ceiling degrees div exp factorial floor gcd lcm ln log log10
min_scale mod pi power pow radians round scale sign sqrt trim_scale trunc width_bucket
random random_normal acos acosd asin asind atan atand atan2 atan2d cos cosd cot cotd sin
sind tan tand sinh cosh tanh asinh acosh atanh erf erfc gamma lgamma to_char to_number
to_hex to_oct to_bin bit_count get_bit set_bit get_byte set_byte numeric int2 int4 int8
float4 float8 bool text varchar bpchar char num_nulls num_nonnulls"""

_STRING = """ascii bit_length btrim ltrim rtrim char_length character_length chr concat
concat_ws format initcap left length lower lpad md5 normalize is_normalized octet_length
overlay parse_ident position quote_ident quote_literal quote_nullable regexp_count
regexp_instr regexp_like regexp_match regexp_matches regexp_replace
regexp_split_to_array regexp_split_to_table regexp_substr repeat replace reverse right
rpad split_part starts_with strpos substr substring similar_to_escape translate unistr
upper casefold convert convert_from convert_to encode decode sha224 sha256 sha384 sha512
string_to_array string_to_table array_to_string to_ascii crc32 crc32c
pg_client_encoding pg_encoding_to_char pg_char_to_encoding like_escape"""

_UUID = "gen_random_uuid uuidv4 uuidv7 uuid_extract_timestamp uuid_extract_version uuid"

_TIME = """age clock_timestamp date_add date_bin date_part date_subtract date_trunc
extract isfinite justify_days justify_hours justify_interval make_date make_interval
make_time make_timestamp make_timestamptz now statement_timestamp timeofday
transaction_timestamp to_timestamp to_date timezone overlaps date time timestamp
timestamptz timetz interval pg_sleep pg_sleep_for pg_sleep_until"""

_AGGREGATES = """count sum avg min max array_agg string_agg json_agg jsonb_agg
json_agg_strict jsonb_agg_strict json_object_agg jsonb_object_agg json_object_agg_strict
jsonb_object_agg_strict json_object_agg_unique jsonb_object_agg_unique
json_object_agg_unique_strict jsonb_object_agg_unique_strict bool_and bool_or every
bit_and bit_or bit_xor corr covar_pop covar_samp regr_avgx regr_avgy regr_count
regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy stddev stddev_pop
stddev_samp variance var_pop var_samp mode percentile_cont percentile_disc any_value
range_agg range_intersect_agg xmlagg grouping"""

_WINDOW = """row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value
last_value nth_value"""

_JSON = """to_json to_jsonb array_to_json row_to_json json_build_array jsonb_build_array
json_build_object jsonb_build_object json_object jsonb_object json_array_elements
jsonb_array_elements json_array_elements_text jsonb_array_elements_text
json_array_length jsonb_array_length json_each jsonb_each json_each_text jsonb_each_text
json_extract_path jsonb_extract_path json_extract_path_text jsonb_extract_path_text
json_object_keys jsonb_object_keys json_populate_record jsonb_populate_record
jsonb_populate_record_valid json_populate_recordset jsonb_populate_recordset
json_to_record jsonb_to_record json_to_recordset jsonb_to_recordset json_strip_nulls
jsonb_strip_nulls jsonb_set jsonb_set_lax jsonb_insert jsonb_path_exists
jsonb_path_match jsonb_path_query jsonb_path_query_array jsonb_path_query_first
jsonb_path_exists_tz jsonb_path_match_tz jsonb_path_query_tz jsonb_path_query_array_tz
jsonb_path_query_first_tz jsonb_pretty json_typeof jsonb_typeof json jsonb"""

_ARRAYS = """array_append array_cat array_dims array_fill array_length array_lower
array_ndims array_position array_positions array_prepend array_remove array_replace
array_reverse array_sample array_shuffle array_sort array_upper cardinality trim_array
unnest generate_subscripts generate_series"""

_TEXT_SEARCH = """to_tsvector to_tsquery plainto_tsquery phraseto_tsquery
websearch_to_tsquery ts_rank ts_rank_cd ts_headline setweight strip tsvector_to_array
array_to_tsvector numnode querytree"""

_RANGES_NET_ENUM = """lower_inc upper_inc lower_inf upper_inf isempty range_merge
int4range int8range numrange tsrange tstzrange daterange int4multirange int8multirange
nummultirange tsmultirange tstzmultirange datemultirange multirange host hostmask
masklen netmask network broadcast family abbrev set_masklen inet_same_family inet_merge
enum_first enum_last enum_range xpath xpath_exists xml_is_well_formed
xml_is_well_formed_document xml_is_well_formed_content"""

# Session and server information that reveals nothing about other tenants, plus the
# catalog helpers the allowlisted driver queries call (format_type, pg_get_expr, …).
_SYSTEM = """version current_database current_schema current_schemas current_setting
current_query pg_backend_pid pg_typeof pg_column_size pg_column_compression
pg_is_in_recovery pg_jit_available pg_trigger_depth txid_current
txid_current_if_assigned pg_current_xact_id pg_current_xact_id_if_assigned
pg_postmaster_start_time pg_conf_load_time pg_size_pretty pg_size_bytes format_type
pg_get_expr pg_get_constraintdef pg_get_indexdef pg_table_is_visible pg_type_is_visible
hashtext pg_collation_for system_user"""

FUNCTION_ALLOWLIST = frozenset(" ".join((
    _MATH, _STRING, _UUID, _TIME, _AGGREGATES, _WINDOW, _JSON, _ARRAYS, _TEXT_SEARCH,
    _RANGES_NET_ENUM, _SYSTEM)).split())

# Functions that look a name up at run time, by the reg* type of their argument.
SEQUENCE_FUNCTIONS = {"nextval": True, "setval": True, "currval": False}  # name: writes?
LOOKUP_FUNCTIONS = {
    "to_regclass": "regclass", "to_regtype": "regtype", "to_regnamespace": "regnamespace",
    "to_regcollation": "regcollation", "to_regproc": "regproc",
    "to_regprocedure": "regprocedure", "to_regoper": "regoper",
    "to_regoperator": "regoperator", "to_regrole": "regrole", "to_regtypemod": "regtype",
    "pg_get_serial_sequence": "regclass",
}

ADVISORY_XACT = frozenset({"pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
                           "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared"})
ADVISORY_SESSION = frozenset({"pg_advisory_lock", "pg_advisory_lock_shared",
                              "pg_try_advisory_lock", "pg_try_advisory_lock_shared"})
# Unlocking only touches the caller's own locks; asyncpg's pool reset sends it.
ADVISORY_UNLOCK = frozenset({"pg_advisory_unlock", "pg_advisory_unlock_shared",
                             "pg_advisory_unlock_all"})

# reg* types: what the looked-up object is called, and whether it may be cast from a
# column or parameter (`open`): their catalog (pg_class, pg_type, pg_namespace,
# pg_collation) is readable anyway, so the lookup reveals nothing new; asyncpg
# (`basetype::regtype`) and psycopg (`to_regtype($1)`) need it.
REG_TYPES = {
    "regclass": ("relation", True),
    "regtype": ("type", True),
    "regnamespace": ("schema", True),
    "regcollation": ("collation", True),
    "regproc": ("function", False),
    "regprocedure": ("function", False),
    "regoper": ("operator", False),
    "regoperator": ("operator", False),
    "regconfig": ("text search configuration", False),
    "regdictionary": ("text search dictionary", False),
    "regrole": ("role", False),
}

# Built-in text search functions whose first argument is a regconfig when they get this
# many arguments: a string there is an object name the server looks up.
TEXT_SEARCH_CONFIG_ARITY = {
    "to_tsvector": 2, "to_tsquery": 2, "plainto_tsquery": 2, "phraseto_tsquery": 2,
    "websearch_to_tsquery": 2, "ts_headline": 4,
}

# TABLESAMPLE methods built into PostgreSQL (others come from extensions).
SAMPLE_METHODS = frozenset({"system", "bernoulli"})
