"""The `mixrec report` subcommand."""
from __future__ import annotations


def add_parser(sub) -> None:
    """Register `mixrec report MODEL_DIR`."""
    p = sub.add_parser("report", help="write one self-contained HTML page about a trained model")
    p.add_argument("model", help="model directory (from `mixrec train`)")
    p.add_argument("--out", default=None, help="HTML file to write (default MODEL_DIR/report.html)")
    p.add_argument("--evaluation", action="append", default=[], metavar="JSON",
                   help="evaluation JSON (mixrec evaluate --json) to plot Recall@K from (repeatable)")
    p.add_argument("--item-labels", default=None, help="item label file (CSV/TSV with item_id and a label column)")
    p.add_argument("--label-col", default="genres")
    p.add_argument("--title-col", default=None, help="column of --item-labels shown as the item's name")
    p.add_argument("--users", type=int, default=5, help="sampled users shown with their components")
    p.add_argument("--top", type=int, default=5, help="items shown per component")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_report)


def cmd_report(a) -> int:
    from mixrec.report.build import write_report

    out = write_report(a.model, a.out, evaluations=a.evaluation, item_labels=a.item_labels, label_col=a.label_col,
                       title_col=a.title_col, n_users=a.users, top=a.top, seed=a.seed)
    print(f"wrote {out}")
    return 0
