"""Device-side orchestration: `Engine`, its `Result`, and camera-frame preprocessing.

    from edgesdk import Engine
    with Engine("model.edge", server="tcp://edge:5555", slo_ms=50) as engine:
        for result in engine.stream(frames):
            print(result.where, result.label, result.timings.total)

Modules: core (the Engine), plan (Plan, and the Strategy and Task types), device
(LocalRunner: the segments and exits that run here), link (the server connection on its
own thread, with live estimates), result (Result, Timings, Where), preprocess, chain
(ChainRunner: a bundle across a chain of `edgesdk serve` stages, pipelined).
"""

from .chain import ChainResult, ChainRunner
from .core import Engine
from .device import LocalRunner
from .plan import Plan, Strategy, Task
from .preprocess import Preprocessor, prepare
from .result import Result, Timings, Where
from .strategy import STRATEGIES

__all__ = ["STRATEGIES", "ChainResult", "ChainRunner", "Engine", "LocalRunner", "Plan",
           "Preprocessor", "Result", "Strategy", "Task", "Timings", "Where", "prepare"]
