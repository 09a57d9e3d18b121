"""CRSM, the strategic layer: KPIs against the goals of strategic directives.

Reads CRFM's Delta tables; never imports CROM or CRFM code.
"""
