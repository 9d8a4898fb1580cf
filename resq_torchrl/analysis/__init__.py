"""Analysis helpers: IGM checks, matrix-game tables and heatmaps."""

from resq_torchrl.analysis.matrix import (
    evaluate_matrix_game,
    format_table,
    igm_consistent,
    plot_heatmap,
    save_heatmap,
)

__all__ = ["evaluate_matrix_game", "format_table", "igm_consistent", "plot_heatmap", "save_heatmap"]
