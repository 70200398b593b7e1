"""Reports of benchmark results: tables, Markdown, a self-contained HTML page, plots and data files.

* :mod:`~cnnlab.report.tables`: the tables as plain ``(header, rows)`` data (terminal, Markdown, HTML);
* :mod:`~cnnlab.report.blocks`: the report's content as blocks, in order;
* :mod:`~cnnlab.report.markdown` and :mod:`~cnnlab.report.html`: the two renderings of those blocks;
* :mod:`~cnnlab.report.plots`: the PNG plots (matplotlib, imported only when plotting);
* :mod:`~cnnlab.report.outputs`: :func:`write_bench_outputs`, every file of a run in one folder;
* :mod:`~cnnlab.report.naming`: unique model names and file-name-safe stems.

Nothing here imports :mod:`cnnlab.bench` at import time (its types are for type checkers only), and
names are imported on first use, so ``import cnnlab.report`` is light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "blocks": ["report_blocks"],
        "html": ["render_html"],
        "markdown": ["render_markdown"],
        "outputs": ["write_bench_outputs"],
        "plots": ["bench_plots"],
        "tables": ["full_table", "lab_table", "mapping_table", "memory_label", "per_class_table", "short_name",
                   "summary_table"],
    },
)

if TYPE_CHECKING:
    from cnnlab.report.blocks import report_blocks as report_blocks
    from cnnlab.report.html import render_html as render_html
    from cnnlab.report.markdown import render_markdown as render_markdown
    from cnnlab.report.outputs import write_bench_outputs as write_bench_outputs
    from cnnlab.report.plots import bench_plots as bench_plots
    from cnnlab.report.tables import full_table as full_table
    from cnnlab.report.tables import lab_table as lab_table
    from cnnlab.report.tables import mapping_table as mapping_table
    from cnnlab.report.tables import memory_label as memory_label
    from cnnlab.report.tables import per_class_table as per_class_table
    from cnnlab.report.tables import short_name as short_name
    from cnnlab.report.tables import summary_table as summary_table
