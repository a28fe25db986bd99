"""The paper's figures and the ones it lacked (matplotlib + seaborn), from a reproduce run's results."""
from .figures import FIGURES, draw_figure, make_figures, plot_compare
from .views import plot_view

__all__ = ["make_figures", "draw_figure", "plot_compare", "plot_view", "FIGURES"]
