# Shared state for every rule file: the validated config, the run's folders, the target list.
import os
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

RUN = config["run"]
RESULTS = f"results/{RUN}"
RESOURCES = f"resources/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# Each rule file appends the final files of its stage here; `rule all` asks for all of them.
TARGETS = []


def all_targets():
    return list(TARGETS)


def data_root():
    """The OpenBHB-layout folder the run reads: simulated, or the user's download."""
    if config["data"]["source"] == "simulate":
        return f"{RESOURCES}/synthetic"
    return config["data"]["root"]


def cache_dir():
    return f"{RESOURCES}/cache"


CACHE_SPLITS = ["train", "internal_test", "external_test"]
