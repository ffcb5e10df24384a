"""Reports: a run directory rendered as HTML (figures, tables, the paper's claims) plus CSV/PNG/SVG.

    cgspn-bench report results/runs/RUN [--compare results/runs/OTHER] [--out reports/local/NAME]

A run spread over several GPUs (``run --gpus``) gets a per-GPU table, a variance run
(``--same-case-on-every-gpu``) the card-to-card spread of each case (gpu_spread.json).

Modules: ``load`` (read a run), ``claims`` (evaluate the scenarios' claims; reusable by gates),
``tables`` and ``figures`` (pandas frames, matplotlib figures), ``expected`` (missing cases of a
partial run), ``render`` (HTML via the jinja2 templates in ``templates/``), ``cli`` (the ``report``
subcommand). ``cgspn-bench reproduce`` (every paper scenario, then this report) is
:mod:`suite.reproduce`. Importing this package is cheap:
``suite.cli`` imports it to build its parser, the heavy modules load when a command runs.
"""

from suite.report.cli import register_cli

__all__ = ["register_cli"]
