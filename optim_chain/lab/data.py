"""Small real data sets generated or shipped with the install, so experiments never download anything.

* :func:`mnist1d`: MNIST-1D (Greydanus & Kobak 2024), generated from the ``mnist1d`` package's
  templates, with a validation split carved from its training set.
* :func:`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).
* :func:`text`: a character-level next-token corpus made of the documentation text that ships
  with Python itself (``pydoc_data.topics``, about 465,000 characters).

Both return a :class:`Dataset` of NumPy arrays with a fixed train/test split, so that every
optimizer in a comparison sees the same examples. Inputs and labels are shaped for the models in
:mod:`optim_chain.lab.models`: digits are ``float32[n, 64]`` with ``int32[n]`` labels, text is
``int32[n, seq_len]`` tokens with ``int32[n, seq_len]`` next-token labels.

Example::

    >>> from optim_chain.lab import data
    >>> ds = data.digits()
    >>> ds.x_train.shape, ds.num_classes
    ((1438, 64), 10)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

DATASETS = ("digits", "text", "mnist1d")
EVALUATION_SPLITS = ("test", "validation")


class Dataset(NamedTuple):
    """A fixed train/test split.

    Attributes:
      name: the data set's name.
      x_train, y_train, x_test, y_test: NumPy arrays (inputs and integer labels).
      num_classes: the number of classes (the vocabulary size for text).
      vocabulary: for text, the characters that the token ids stand for; empty otherwise.
      x_val, y_val: a validation split carved from the training data, where the data set has one.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    vocabulary: str = ""
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")


def digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's digits: pixel values scaled to [0, 1], a shuffled split fixed by ``split_seed``.

    Args:
      test_fraction: the share of the 1,797 images held out for testing, in (0, 1).
      split_seed: the seed of the shuffle that decides the split.
    """
    from sklearn.datasets import load_digits

    _check_fraction(test_fraction)
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)


def corpus() -> str:
    """The documentation text shipped with Python (``pydoc_data.topics``), topics in sorted order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def text(seq_len: int = 64, test_fraction: float = 0.1, min_count: int = 20) -> Dataset:
    """A character-level language-modelling task on Python's own documentation.

    The text is cut into non-overlapping windows of ``seq_len + 1`` characters; the model reads
    the first ``seq_len`` and predicts each next character. The last ``test_fraction`` of the
    text is the test set. Characters seen fewer than ``min_count`` times map to one shared
    "rare" token (shown as ``"?"``), which keeps the vocabulary to plain ASCII.

    Args:
      seq_len: the context length, ``>= 2``.
      test_fraction: the share of the text held out for testing, in (0, 1).
      min_count: characters rarer than this share one token.
    """
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    _check_fraction(test_fraction)
    raw = corpus()
    counts: dict[str, int] = {}
    for ch in raw:
        counts[ch] = counts.get(ch, 0) + 1
    kept = sorted(ch for ch, n in counts.items() if n >= min_count and ch != "?")
    vocabulary = "?" + "".join(kept)
    lookup = np.zeros(max(map(ord, counts)) + 1, np.int32)
    for index, ch in enumerate(vocabulary):
        lookup[ord(ch)] = index
    tokens = lookup[np.frombuffer(raw.encode("utf-32-le"), np.uint32)]
    split = int(len(tokens) * (1 - test_fraction))

    def windows(stream: np.ndarray) -> np.ndarray:
        count = (len(stream) - 1) // seq_len
        starts = np.arange(count) * seq_len
        return np.stack([stream[s : s + seq_len + 1] for s in starts])

    train, test = windows(tokens[:split]), windows(tokens[split:])
    return Dataset(
        "text",
        train[:, :-1],
        train[:, 1:],
        test[:, :-1],
        test[:, 1:],
        num_classes=len(vocabulary),
        vocabulary=vocabulary,
    )


def mnist1d(
    seed: int = 42,
    num_samples: int = 5000,
    validation_fraction: float = 0.2,
    train_size: int = 0,
    evaluation_split: str = "test",
) -> Dataset:
    """MNIST-1D (Greydanus & Kobak, ICML 2024), generated here by the ``mnist1d`` package.

    ``mnist1d.data.make_dataset`` builds the data from its ten digit templates with the package's
    default arguments (40-point signals, an 80/20 train/test split), the generation seed set to
    ``seed``; nothing is downloaded. The last ``validation_fraction`` of the training examples
    (the package's order is already shuffled) are held out as a validation split, so that
    hyperparameters can be tuned without reading the test split. ``validation_fraction=0``
    keeps all of them for training: the 4,000/1,000 split of the published accuracies.

    Args:
      seed: the generation seed (the package's default is 42): another seed, another data set.
      num_samples: examples generated in all (train, validation and test).
      validation_fraction: the share of the training examples held out for validation, in [0, 1).
      train_size: keep only the first ``train_size`` training examples (0: all of them), for
        studies of how results change with the amount of data.
      evaluation_split: ``"test"``, or ``"validation"`` to put the validation split where the
        training loops read the test split (tuning: the test split is then never read).

    Returns:
      ``float32[n, 40]`` signals with ``int32`` labels; ``x_val``/``y_val`` hold the validation split.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction!r}")
    if evaluation_split not in EVALUATION_SPLITS:
        raise ValueError(
            f"evaluation_split must be one of {', '.join(EVALUATION_SPLITS)}; got {evaluation_split!r}"
        )
    generated = _generate_mnist1d(int(seed), int(num_samples))
    x, y = generated["x"], generated["y"]
    n_train = len(y) - int(round(validation_fraction * len(y)))
    if evaluation_split == "validation" and n_train == len(y):
        raise ValueError("evaluation_split='validation' needs a validation split: validation_fraction > 0")
    x_train, y_train, x_val, y_val = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    if train_size:
        if not 0 < train_size <= len(y_train):
            raise ValueError(f"train_size must lie in [1, {len(y_train)}], got {train_size!r}")
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_test, y_test = generated["x_test"], generated["y_test"]
    if evaluation_split == "validation":
        x_test, y_test = x_val, y_val
    return Dataset("mnist1d", x_train, y_train, x_test, y_test, 10, x_val=x_val, y_val=y_val)


@functools.lru_cache(maxsize=64)
def _generate_mnist1d(seed: int, num_samples: int) -> dict[str, np.ndarray]:
    """``mnist1d.data.make_dataset`` at ``seed``, as read-only float32/int32 arrays.

    Kept for the life of the process (about 1 MB a draw): the regimes of a map and the stages of
    a sweep share their draws, and generating one takes about a second.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    generated = make_dataset(args)
    arrays = {
        "x": generated["x"].astype(np.float32),
        "y": generated["y"].astype(np.int32),
        "x_test": generated["x_test"].astype(np.float32),
        "y_test": generated["y_test"].astype(np.int32),
    }
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


LOADERS = {"digits": digits, "text": text, "mnist1d": mnist1d}


def load(name: str, **kwargs: object) -> Dataset:
    """The data set called ``name`` (``"digits"``, ``"text"`` or ``"mnist1d"``) with its keyword arguments."""
    if name not in DATASETS:
        raise ValueError(f"data set must be one of {', '.join(DATASETS)}; got {name!r}")
    return LOADERS[name](**kwargs)  # type: ignore[arg-type]
