"""The readout: how a representation explains itself, in one package.

A run's readout is fitted at the end of training (:mod:`~seer.readout.fit`: prototypes from
the training split, temperature and ``none`` threshold from the calibration split,
:mod:`~seer.readout.calibration`), recorded in the run's ``seer.json`` with its kind
(:mod:`~seer.readout.record`), and read by evaluation, inference and export
(:class:`~seer.readout.reading.Readout`); the geometry they share is
:mod:`~seer.readout.cosine`. Training, evaluation and inference import it from here.
"""

from seer.readout.calibration import calibrate
from seer.readout.cosine import (
    check_rows,
    compute_prototypes,
    cosines,
    normalize_rows,
    softmax_probabilities,
)
from seer.readout.fit import FittedReadout, fit_calibration, fit_readout
from seer.readout.reading import NONE, Explanation, Reading, Readout
from seer.readout.record import KIND, KINDS, VERSION, readout_kind, record

__all__ = [
    "KIND",
    "KINDS",
    "NONE",
    "VERSION",
    "Explanation",
    "FittedReadout",
    "Reading",
    "Readout",
    "calibrate",
    "check_rows",
    "compute_prototypes",
    "cosines",
    "fit_calibration",
    "fit_readout",
    "normalize_rows",
    "readout_kind",
    "record",
    "softmax_probabilities",
]
