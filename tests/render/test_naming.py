"""The one escaping rule for names (issue 27): CSV cells that start no formula, plot text that is never mathtext."""

from __future__ import annotations

import pytest

from cnnlab.render.naming import FORMULA_STARTS, class_label, csv_cell, csv_row, csv_text, plot_text


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@A1", "\tx", "\rx", "'x", "''=x", "plain", "", "a=b"])
def test_csv_cells_start_no_formula_and_come_back_exactly(text: str) -> None:
    cell = csv_cell(text)
    assert not cell.startswith(FORMULA_STARTS)
    assert csv_text(cell) == text


def test_numbers_stay_numbers() -> None:
    assert csv_row([-1, -0.5, 3, None, "-x"]) == [-1, -0.5, 3, None, "'-x"]


def test_plot_text_escapes_every_dollar() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    assert plot_text("$x^{$") == r"\$x^{\$" and class_label("a$b$") == r"a\$b\$"
    fig, ax = plt.subplots()
    ax.set_title(plot_text("$x^{$ and $\\frac$"))
    fig.savefig(io.BytesIO(), format="png")  # mathtext would raise ValueError here
    plt.close(fig)
