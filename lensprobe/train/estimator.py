"""Probes as scikit-learn classifiers: ``fit`` / ``predict`` / ``predict_proba`` / ``score``.

:class:`ProbeClassifier` trains one probe at one weight decay on every row it is given;
:class:`ProbeClassifierCV` chooses the weight decay by the protocol's K-fold cross-validation
first (:func:`~lensprobe.train.protocol.fit_all_rows`). Both follow the scikit-learn estimator
protocol (``get_params`` / ``set_params``, fitted attributes ending in ``_``, ``classes_`` in the
labels' own values), so ``sklearn.model_selection`` tools (``cross_val_score``,
``GridSearchCV``, ``clone``) accept them.

``X`` is ``Activations`` (from :func:`lensprobe.capture`, ragged or a store), or an array or
tensor ``(n, pos, d_model)`` of padded sequences with an optional ``mask`` (a token whose vector
is all NaN counts as padding, so splitters that slice ``X`` alone keep the mask), or
``(n, d_model)``: one token per sequence, where every probe kind is a logistic regression.
This module needs scikit-learn (``pip install scikit-learn``).
"""

from __future__ import annotations

from typing import Any, no_type_check

import numpy as np
import torch
from torch import Tensor

from lensprobe.activations import Activations
from lensprobe.errors import InputError, MissingDependencyError
from lensprobe.metrics import probabilities
from lensprobe.probes import Probe
from lensprobe.train.config import ProtocolConfig, TrainConfig
from lensprobe.train.protocol import fit_all_rows

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d
except ImportError as err:  # pragma: no cover - exercised only without scikit-learn
    raise MissingDependencyError(
        "lp.ProbeClassifier needs scikit-learn: pip install scikit-learn"
    ) from err

__all__ = ["ProbeClassifier", "ProbeClassifierCV"]


class ProbeClassifier(ClassifierMixin, BaseEstimator):
    """One probe trained on every row, as a scikit-learn classifier.

    Args:
        kind: Probe kind: ``attention``, ``mean``, ``last``, ``max``, ``multimax``, ... (any of
            :func:`~lensprobe.probes.probe_kinds`).
        n_heads: Probe heads (kinds with heads only).
        options: The kind's own settings, e.g. ``{"window": 8}`` for ``rolling``.
        weight_decay: The L2 penalty (``wd / 2 * ||W||^2`` on normalised activations).
        optimizer: ``auto`` (AdamW for attention, L-BFGS for pooled probes), ``adamw``,
            ``lbfgs``.
        normalize: ``token_norm`` (divide by the median token norm over sqrt(d_model) while
            training) or ``none``.
        bos: ``auto`` (drop the first token when the capture prepended BOS), ``drop``, ``keep``.
        train: Optimiser settings (default ``TrainConfig()``).
        seed: Seed of the initialisation, data order and early-stopping slice.

    Example:
        >>> clf = lp.ProbeClassifier(kind="attention", n_heads=8).fit(acts, labels)
        >>> clf.predict(acts), clf.score(acts, labels)
    """

    @no_type_check  # scikit-learn: __init__ stores its arguments unchecked; fit validates them
    def __init__(
        self,
        kind: str = "attention",
        n_heads: int = 1,
        weight_decay: float = 0.0,
        optimizer: str = "auto",
        normalize: str = "token_norm",
        bos: str = "auto",
        train: TrainConfig | None = None,
        seed: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.n_heads = n_heads
        self.options = options
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.normalize = normalize
        self.bos = bos
        self.train = train
        self.seed = seed

    # -- what subclasses change -----------------------------------------------------------------
    def _search(self) -> dict[str, Any]:
        """The protocol settings of the weight decay: one decay, no cross-validation."""
        return {"weight_decays": (float(self.weight_decay),)}

    def _config(self) -> ProtocolConfig:
        return ProtocolConfig(
            probe=self.kind,  # type: ignore[arg-type]
            n_heads=self.n_heads,
            options=dict(self.options or {}),
            optimizer=self.optimizer,  # type: ignore[arg-type]
            normalize=self.normalize,  # type: ignore[arg-type]
            bos=self.bos,  # type: ignore[arg-type]
            seeds=(self.seed,),
            train=self.train or TrainConfig(),
            **self._search(),
        )

    _cross_validate = False

    # -- the estimator protocol ------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, mask: Any = None) -> ProbeClassifier:
        """Train on every row of ``X`` (``y``: one label per row; default an ``Activations``' own).

        Returns:
            self, with ``probe_``, ``classes_``, ``n_features_in_`` and ``weight_decay_`` set.
        """
        data, mask = _inputs(X, mask)
        if y is None and not isinstance(data, Activations):
            raise InputError(
                "requires y to be passed, but the target y is None: fit(X, y) with one label "
                "per row (only Activations carry their own labels)"
            )
        if y is not None:
            y = column_or_1d(np.asarray(y, dtype=object) if _strings(y) else y, warn=True)
            check_classification_targets(y)
        _one_class_check(data, y)
        fitted = fit_all_rows(
            data, y, mask=mask, config=self._config(), cross_validate=self._cross_validate
        )
        self.probe_: Probe = fitted.probe
        self.classes_ = np.asarray(fitted.classes)
        self.n_features_in_ = fitted.probe.config.d_model
        self.weight_decay_ = fitted.weight_decay
        self.cv_results_ = fitted.cv_summary
        self.precision_ = fitted.precision
        return self

    def decision_function(self, X: Any, mask: Any = None) -> np.ndarray:
        """The probe's logits: ``(n,)`` for two classes (positive: ``classes_[1]``), else ``(n, k)``."""
        logits = self._logits(X, mask)
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def predict_proba(self, X: Any, mask: Any = None) -> np.ndarray:
        """Class probabilities ``(n, k)``, columns in the order of ``classes_`` (two for binary)."""
        return probabilities(torch.from_numpy(self._logits(X, mask))).numpy()

    def predict(self, X: Any, mask: Any = None) -> np.ndarray:
        """The most probable class of each row, in the labels' own values."""
        proba = self.predict_proba(X, mask)  # first: an unfitted estimator raises NotFittedError
        return self.classes_[proba.argmax(axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None, mask: Any = None) -> float:
        """Accuracy of :meth:`predict` against ``y``."""
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(y, self.predict(X, mask), sample_weight=sample_weight))

    def _logits(self, X: Any, mask: Any) -> np.ndarray:
        check_is_fitted(self, "probe_")
        data, mask = _inputs(X, mask)
        if isinstance(data, Activations):
            if int(data.meta.d_model) != self.n_features_in_:
                raise _width_error(int(data.meta.d_model), self)
            x, mask = data.pad(dtype=torch.float32)
        else:
            x = data
        if x.shape[-1] != self.n_features_in_:
            raise _width_error(x.shape[-1], self)
        with torch.no_grad():
            chunks = [
                self.probe_(x[i : i + 256].to(torch.float32), mask[i : i + 256])
                for i in range(0, x.shape[0], 256)
            ]
        return torch.cat(chunks).double().cpu().numpy()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags


class ProbeClassifierCV(ProbeClassifier):
    """:class:`ProbeClassifier` whose weight decay is chosen by the protocol's K-fold CV.

    Every decay of ``weight_decays`` x fold trains as one batched model (with each decay's refit
    on all rows); the decay with the best mean CV ``select_by`` wins (``weight_decay_``) and its
    refit member is the probe. ``cv_results_`` holds one row of CV metrics per decay.

    Args:
        kind, n_heads, options, optimizer, normalize, bos, train, seed: As
            :class:`ProbeClassifier`.
        weight_decays: The grid (default: the study's).
        n_folds: Cross-validation folds.
        select_by: The CV metric that picks the decay (``log_loss``: lower is better).
    """

    @no_type_check  # scikit-learn: __init__ stores its arguments unchecked; fit validates them
    def __init__(
        self,
        kind: str = "attention",
        n_heads: int = 1,
        weight_decays: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1),
        n_folds: int = 5,
        select_by: str = "log_loss",
        optimizer: str = "auto",
        normalize: str = "token_norm",
        bos: str = "auto",
        train: TrainConfig | None = None,
        seed: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.n_heads = n_heads
        self.options = options
        self.optimizer = optimizer
        self.normalize = normalize
        self.bos = bos
        self.train = train
        self.seed = seed
        self.weight_decays = weight_decays
        self.n_folds = n_folds
        self.select_by = select_by

    _cross_validate = True

    def _search(self) -> dict[str, Any]:
        """The protocol settings of the decay search: the grid, the folds, the CV metric."""
        return {
            "weight_decays": tuple(self.weight_decays),
            "n_folds": self.n_folds,
            "select_by": self.select_by,
        }


def _strings(y: Any) -> bool:
    return isinstance(y, (list, tuple)) and any(isinstance(v, str) for v in y)


def _width_error(width: int, est: ProbeClassifier) -> InputError:
    return InputError(
        f"X has {width} features, but {type(est).__name__} is expecting {est.n_features_in_} "
        "features as input: pass activations of the hook the probe was fitted on"
    )


def _one_class_check(data: Any, y: Any) -> None:
    """A scikit-learn style error for labels of one class (before any other work)."""
    values = data.labels if y is None else y
    if values is not None and len(np.unique(np.asarray(values, dtype=object).astype(str))) < 2:
        raise InputError(
            "only one class in y: a classifier needs at least two classes; check the labels "
            "(or the rows selected)"
        )


def _inputs(X: Any, mask: Any) -> tuple[Activations | Tensor, Tensor | None]:
    """``Activations`` as they are; arrays as float ``(n, pos, d_model)`` and their mask.

    A 2-D ``(n, d_model)`` array is ``n`` sequences of one token. Without a mask, a token whose
    vector is all NaN is padding; any other non-finite value is an error.
    """
    if isinstance(X, Activations):
        if mask is not None:
            raise InputError("Activations carry their own lengths: leave mask=None")
        return X, None
    if isinstance(X, Tensor):
        X = X.detach().cpu().float().numpy()
    arr = check_array(
        X, allow_nd=True, dtype=(np.float32, np.float64), ensure_all_finite=False, copy=True
    )
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3:
        raise InputError(
            f"X must be (n, pos, d_model) or (n, d_model) activations, got {arr.ndim} dims"
        )
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    padding = torch.isnan(x).all(dim=-1)
    if mask is None:
        mask = ~padding
    else:
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        if mask.shape != x.shape[:2]:
            raise InputError(f"mask has shape {tuple(mask.shape)}, X has {tuple(x.shape[:2])}")
    if not torch.isfinite(x[mask]).all():
        raise InputError(
            "Input X contains NaN or infinity at valid tokens: clean the activations (a padding "
            "token may be all NaN, or masked out with mask=...)"
        )
    x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype))
    return x, mask
