"""A checkpoint format that cannot run code: a pickle read back with an explicit allow-list of types.

A plain ``pickle.load`` calls whatever the file names (``os.system`` included), and run folders are shared (team
storage, Ray workers): whoever can write there could run code on the next ``--resume``. The checkpoint holds the
CMA-ES state (pycma's objects), so JSON alone would mean re-implementing pycma's state; instead the unpickler
refuses every global not listed below. A plain field added to the run state (numbers, strings, lists, dicts,
numpy arrays and scalars) needs no change here; a new class does, and the checkpoint test names it.

A file starts with ``MAGIC``: a checkpoint without it was written by an older bbtune as a plain pickle and is never
unpickled.

>>> loads(dumps({"z": [1.0, 2.0]}))
{'z': [1.0, 2.0]}
"""
from __future__ import annotations

import io
import pickle
from typing import Any

MAGIC = b"bbtune-checkpoint 2\n"

# (module, name) of every global a bbtune checkpoint holds: pycma's optimizer, numpy's arrays and generators, the
# run state. Classes and a few pure functions pycma keeps as attributes (none of them touches files or processes).
_ALLOWED: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    "builtins": "range slice complex set frozenset bytearray",
    "collections": "OrderedDict defaultdict deque",
    "numpy": "dtype ndarray",
    "numpy._core.multiarray": "_reconstruct scalar",
    "numpy.core.multiarray": "_reconstruct scalar",
    "numpy._core.numeric": "_frombuffer",
    "numpy.core.numeric": "_frombuffer",
    "numpy.linalg": "eigh",
    "numpy.random._pickle": "__generator_ctor __bit_generator_ctor __randomstate_ctor",
    "numpy.random._pcg64": "PCG64",
    "numpy.random._mt19937": "MT19937",
    "numpy.random.bit_generator": "SeedSequence __pyx_unpickle_SeedSequence",
    "numpy.random.mtrand": "RandomState",
    "bbtune.runs.tuner": "_State",
    "bbtune.search.evaluate": "Evaluation",
    "bbtune.search.optimizers": "CMAES RandomSearch _Randn",
    "cma.boundary_handler": "BoundNone BoundTransform BoundPenalty",
    "cma.evolution_strategy": "CMAEvolutionStrategy _CMASolutionDict_functional _CMAStopDict _StopTolXStagnation _pass",
    "cma.logger": "CMADataLogger",
    "cma.optimization_tools": "BestSolution",
    "cma.options_parameters": "CMAOptions CMAParameters is_feasible",
    "cma.recombination_weights": "RecombinationWeights",
    "cma.sampler": "GaussFullSampler",
    "cma.sigma_adaptation": "CMAAdaptSigmaCSA",
    "cma.transformations": "DiagonalDecoding GenoPheno RoundIntegerVariables",
    "cma.utilities.utils": "BlancClass DictFromTagsInString ElapsedWCTime MoreToWrite SolutionDict",
}.items()}


class Refused(pickle.UnpicklingError):
    """The file is not read any further: it names a global outside the allow-list, or lacks the header."""


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name not in _ALLOWED.get(module, ()):
            raise Refused(f"it names {module}.{name}, which a bbtune checkpoint never holds (it could run code)")
        return super().find_class(module, name)


def dumps(obj: Any) -> bytes:
    return MAGIC + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """Read a checkpoint written by `dumps`; raises `Refused` for a foreign global or a file without the header
    (an older bbtune's plain pickle, or not a checkpoint), `UnpicklingError` and others for a damaged one."""
    if not data.startswith(MAGIC):
        raise Refused("it is not in this bbtune's checkpoint format (older versions wrote a plain pickle, which "
                      "could run code when read)")
    return _AllowListUnpickler(io.BytesIO(data[len(MAGIC):])).load()
