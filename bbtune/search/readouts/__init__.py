"""Readouts: how what a backend returned at the answer position becomes class scores (`estimators`), chosen
out of fold on the training pool (`choice`), from features a backend actually returned (`answers`, `features`)."""
from bbtune.search.answers import Answers
from bbtune.search.readouts.choice import ReadoutChoice, ReadoutScore, choose_readout
from bbtune.search.readouts.estimators import Readout, ReadoutKind, load_readout, make_readout

__all__ = ["Answers", "Readout", "ReadoutChoice", "ReadoutKind", "ReadoutScore", "choose_readout", "load_readout",
           "make_readout"]
