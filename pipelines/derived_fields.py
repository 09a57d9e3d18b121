"""The columns each kind of datafication adds to a source's silver table, in table order.

Directives read these to declare silver's schema before any job runs; the datafying
transforms in pipelines/crom produce exactly these columns.
"""

from __future__ import annotations

from pyspark.sql import types as T

# Log lines (pipelines.crom.logs.mine_templates).
TEMPLATE_FIELDS = (
    T.StructField("template_id", T.LongType(), True),
    T.StructField("template", T.StringType(), True),
    T.StructField("parameters", T.ArrayType(T.StringType()), True),
    T.StructField("severity", T.StringType(), True),
)

# Free text (pipelines.crom.text.datafy_text).
TEXT_FIELDS = (
    T.StructField("sentiment_label", T.StringType(), True),
    T.StructField("sentiment_score", T.DoubleType(), True),
    T.StructField("complaint", T.BooleanType(), True),
    T.StructField("complaint_reason", T.StringType(), True),
    T.StructField("brands", T.ArrayType(T.StringType()), True),
    T.StructField("products", T.ArrayType(T.StringType()), True),
    T.StructField("hashtags", T.ArrayType(T.StringType()), True),
    T.StructField("mentions_hmac", T.ArrayType(T.StringType()), True),
    T.StructField("language", T.StringType(), True),
)

# Orders (pipelines.crom.orders.datafy_orders).
ORDER_FIELDS = (
    T.StructField("base_currency", T.StringType(), True),
    T.StructField("fx_rate", T.DoubleType(), True),  # units of the order currency per base unit
    T.StructField("amount_base", T.DoubleType(), True),
    T.StructField("item_count", T.IntegerType(), True),
    T.StructField("units", T.LongType(), True),
    T.StructField("skus", T.ArrayType(T.StringType()), True),
    T.StructField("products", T.ArrayType(T.StringType()), True),
    T.StructField("items_subtotal", T.DoubleType(), True),
    T.StructField("promoted", T.BooleanType(), True),
    T.StructField("discount", T.DoubleType(), True),  # items' list total minus the amount paid
    T.StructField("discount_base", T.DoubleType(), True),
)

# Web events (pipelines.crom.web.datafy_web).
WEB_FIELDS = (
    T.StructField("page_path", T.StringType(), True),
    T.StructField("referrer_host", T.StringType(), True),
    T.StructField("referrer_kind", T.StringType(), True),  # direct, internal, search, social, email, other
    T.StructField("campaign_source", T.StringType(), True),
    T.StructField("campaign_medium", T.StringType(), True),
    T.StructField("campaign_name", T.StringType(), True),
    T.StructField("browser", T.StringType(), True),
    T.StructField("browser_major", T.StringType(), True),
    T.StructField("os", T.StringType(), True),
    T.StructField("device_type", T.StringType(), True),  # desktop, mobile, tablet, bot, other
    T.StructField("is_bot", T.BooleanType(), True),
)

# Items with a lifecycle, e.g. service tickets (pipelines.crom.lifecycle.lifecycle_columns).
LIFECYCLE_FIELDS = (
    T.StructField("hours_open", T.DoubleType(), True),  # from the item's opening to this event
    T.StructField("overdue", T.BooleanType(), True),  # hours_open beyond the item's target; null without one
)
