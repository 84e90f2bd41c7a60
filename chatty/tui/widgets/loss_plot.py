"""A live plot of training and validation loss by optimizer step."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class LossPlot(PlotextPlot):
    """Training loss as a line, validation loss as points; redrawn when a value arrives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train: list[tuple[int, float]] = []
        self.validation: list[tuple[int, float]] = []

    def on_mount(self) -> None:
        super().on_mount()
        self.redraw()

    def reset(self) -> None:
        self.train.clear()
        self.validation.clear()
        self.redraw()

    def add_train(self, step: int, loss: float) -> None:
        self.train.append((step, loss))
        self.redraw()

    def add_validation(self, step: int, loss: float) -> None:
        self.validation.append((step, loss))
        self.redraw()

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.title("loss")
        plt.xlabel("step")
        if self.train:
            # Steps are whole numbers; without explicit ticks plotext labels fractions between them.
            last = self.train[-1][0]
            every = max(1, last // 8)
            plt.xticks(list(range(0, last + 1, every)))
            plt.plot([s for s, _ in self.train], [v for _, v in self.train], label="train", marker="braille")
        if self.validation:
            plt.scatter([s for s, _ in self.validation], [v for _, v in self.validation], label="validation", marker="●")
        self.refresh()
