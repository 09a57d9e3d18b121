"""Layered CRM pipelines: CROM (operational), CRFM (functional) and CRSM (strategic).

The layers share Delta tables and nothing else: `pipelines.crom` never imports
`pipelines.crfm` or `pipelines.crsm`, and each upper layer reads only the tables below it.
"""
