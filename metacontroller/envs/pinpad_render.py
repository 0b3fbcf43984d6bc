"""Pinpad drawn as an RGB image: the `rgb_array` render mode of `VecPinpadEnv` and `PinpadEnv`."""
from __future__ import annotations

import numpy as np

CELL_PX = 8
PALETTE = np.array(
    [(230, 25, 75), (245, 130, 48), (255, 225, 25), (60, 180, 75),
     (70, 240, 240), (0, 130, 200), (145, 30, 180), (240, 50, 230)], dtype = np.uint8,
)   # colour k's RGB
WALL_RGB, EMPTY_RGB, GRID_RGB, TRAIL_RGB, AGENT_RGB = (70, 70, 70), (255, 255, 255), (200, 200, 200), (150, 150, 150), (0, 0, 0)


def render_rgb(colour_cells: np.ndarray, wall_cells: np.ndarray, agent_cell: int, trail: np.ndarray, grid: int) -> np.ndarray:
    """(grid · 8, grid · 8, 3) uint8 of a grid × grid layout, cells numbered row-major: colour cells,
    dark walls, grey dots on the visited `trail` ((grid²,) bool), black agent square."""
    cells = np.tile(np.array(EMPTY_RGB, dtype = np.uint8), (grid * grid, 1))
    cells[colour_cells] = PALETTE
    cells[wall_cells] = WALL_RGB
    image = np.repeat(np.repeat(cells.reshape(grid, grid, 3), CELL_PX, 0), CELL_PX, 1)
    image[CELL_PX - 1::CELL_PX, :] = GRID_RGB  # 1 px grid lines
    image[:, CELL_PX - 1::CELL_PX] = GRID_RGB
    mid = CELL_PX // 2
    for cell in np.flatnonzero(trail):
        r, c = cell // grid * CELL_PX, cell % grid * CELL_PX
        image[r + mid - 1:r + mid + 1, c + mid - 1:c + mid + 1] = TRAIL_RGB
    r, c = agent_cell // grid * CELL_PX, agent_cell % grid * CELL_PX
    image[r + 2:r + CELL_PX - 3, c + 2:c + CELL_PX - 3] = AGENT_RGB
    return image
