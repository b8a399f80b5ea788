"""Self-contained HTML reports of trained models (``mixrec report``)."""
from mixrec.report.build import build_report, component_top_items, weight_entropy, write_report

__all__ = ["build_report", "component_top_items", "weight_entropy", "write_report"]
