"""Run a submission's estimator.py the way the challenge server calls it, in a clean interpreter.

A standalone script (it imports nothing from brainage): ``python -I server_run.py SPEC.json``.
Before anything else it installs an import hook that refuses the packages named in the spec
(``brainage`` and ``monai`` by default), so a submission that depends on them fails here as it
would on the server. Then, per request: ``get_estimator()``, ``fit(None, None)`` (once), set
``indices`` on every pipeline step that has it, ``predict`` on the memory-mapped array, reset
``indices`` to None.

SPEC.json::

    {"submission": folder, "env": {"VBM_MASK": path, "QUASIRAW_MASK": path},
     "requests": [{"name": "train", "array": "train.npy", "indices": null | [rows] | "range"}],
     "out": "features.npz", "block": ["brainage", "monai"]}

Writes ``out`` (one float32 array per request name) and ``out`` + ``.json`` (seconds per
request, feature shapes, and the proof that the blocked packages could not be imported).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path


class RefuseImports(importlib.abc.MetaPathFinder):
    """Import hook raising ImportError for a set of top-level packages."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} is not available on the challenge server (blocked in this check)")
        return None


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    blocked = list(spec.get("block", ["brainage", "monai"]))
    sys.meta_path.insert(0, RefuseImports(blocked))
    for name in list(sys.modules):
        if name.split(".")[0] in blocked:
            del sys.modules[name]
    refused = {}
    for name in blocked:
        try:
            __import__(name)
            refused[name] = False
        except ImportError:
            refused[name] = True

    import numpy as np

    os.environ.update({k: str(v) for k, v in spec.get("env", {}).items()})
    source = Path(spec["submission"]) / "estimator.py"
    module_spec = importlib.util.spec_from_file_location("estimator", source)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    start = time.perf_counter()
    pipeline = module.get_estimator().fit(None, None)
    report = {"refused_imports": refused, "fit_seconds": time.perf_counter() - start, "requests": {}}
    results = {}
    for request in spec["requests"]:
        X = np.load(request["array"], mmap_mode="r")
        indices = request.get("indices")
        rows = range(len(X)) if indices == "range" else indices
        steps = [step for step in pipeline if hasattr(step, "indices")]
        if not steps:
            raise SystemExit("no step of the submission's pipeline has an `indices` attribute")
        for step in steps:
            step.indices = rows
        start = time.perf_counter()
        try:
            features = np.asarray(pipeline.predict(X))
        finally:
            for step in steps:
                step.indices = None
        results[request["name"]] = features
        report["requests"][request["name"]] = {
            "seconds": time.perf_counter() - start,
            "shape": list(features.shape),
            "dtype": str(features.dtype),
        }
    out = Path(spec["out"])
    np.savez(out, **results)
    Path(str(out) + ".json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -I server_run.py SPEC.json")
    sys.exit(main(sys.argv[1]))
