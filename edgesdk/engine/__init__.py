"""Device-side orchestration: `Engine`, its `Result`, and camera-frame preprocessing.

    from edgesdk import Engine
    with Engine("model.edge", server="tcp://edge:5555", slo_ms=50) as engine:
        for result in engine.stream(frames):
            print(result.where, result.label, result.timings.total)

Modules: core (the Engine), device (segments and exits here), link (the server
connection on its own thread, with live estimates), result, preprocess.
"""

from .core import STRATEGIES, Engine
from .preprocess import Preprocessor, prepare
from .result import Result, Timings

__all__ = ["STRATEGIES", "Engine", "Preprocessor", "Result", "Timings", "prepare"]
