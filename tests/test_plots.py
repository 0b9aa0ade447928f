from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from pipeline.report.plots import save_confusion_heatmap, save_learning_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)  # (h, w, channels)
    assert image.ndim == 3
    h, w, channels = image.shape
    assert h > 100
    assert w > 100
    assert channels in (3, 4)
    distinct = np.unique(image.reshape(-1, channels), axis=0)  # (n_colours, channels)
    assert len(distinct) > 10
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_confusion_heatmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, size=(10, 10)) + np.diag(np.full(10, 900))
    confusion[3] = 0  # a true class with no samples must not break row normalisation
    path = tmp_path / "confusion.png"
    save_confusion_heatmap(confusion, [str(d) for d in range(10)], path, title="test")
    _check_png(path)


def test_confusion_heatmap_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    path.write_bytes(b"stale")
    save_confusion_heatmap(np.array([[5, 1], [2, 7]]), ["a", "b"], path, title="two")
    _check_png(path)


def test_confusion_heatmap_rejects_wrong_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class names"):
        save_confusion_heatmap(np.eye(3, dtype=np.int64), ["a", "b"], tmp_path / "x.png", title="")
    assert list(tmp_path.iterdir()) == []


def test_learning_curves(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    save_learning_curves([1, 2, 3, 4], [2.3, 0.6, 0.4, 0.3], [0.85, 0.92, 0.95, 0.96], path)
    _check_png(path)


def test_learning_curves_single_epoch(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    save_learning_curves([1], [0.5], [0.9], path)
    _check_png(path)


@pytest.mark.parametrize(
    ("epochs", "loss", "accuracy", "message"),
    [
        ([], [], [], "non-empty"),
        ([1, 2], [0.5], [0.9, 0.95], "equal"),
        ([1], [0.5], [90.0], "fractions"),  # percent instead of fraction
    ],
)
def test_learning_curves_rejects_bad_input(
    tmp_path: Path, epochs: list[int], loss: list[float], accuracy: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        save_learning_curves(epochs, loss, accuracy, tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_render_keeps_old_png_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "curves.png"
    save_learning_curves([1], [0.5], [0.9], path)
    before = path.read_bytes()

    def half_write(self: Figure, fname: Path, **kwargs: object) -> None:
        Path(fname).write_bytes(PNG_SIGNATURE)
        raise RuntimeError("killed mid-render")

    monkeypatch.setattr(Figure, "savefig", half_write)
    with pytest.raises(RuntimeError, match="killed"):
        save_learning_curves([1, 2], [0.5, 0.4], [0.9, 0.95], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
