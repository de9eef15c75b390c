# Shared state of the workflow: the validated config, the run's folders, the file naming of the
# brain-age stages, the one helper that turns options into `brainage` flags, and the parse-time
# checks. The default target (`rule all`, in the Snakefile) lists what each stage produces.
import json
import os
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

try:  # names with their one home in the package: imported, never copied
    from brainage.data.cache import SPLITS
    from brainage.debias.steps import format_rho
    from brainage.evaluation.reference import REFERENCE_KINDS
    from brainage.training.config import CONTRASTIVE_METHODS, METHODS, TRISTATE_OPTIONS, WORKFLOW_KEYS
except ImportError as err:
    raise WorkflowError(
        f"the workflow reads its split, method and option names from the brainage package, which is not "
        f"importable here ({err}): run snakemake in the environment brainage is installed in (`make run` "
        "sets up .venv)"
    ) from err


validate(config, schema="../schemas/config.schema.yaml")

RUN = config["run"]
RESULTS = f"results/{RUN}"
RESOURCES = f"resources/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

def data_root():
    """The OpenBHB-layout folder the run reads: simulated, or the user's download."""
    if config["data"]["source"] == "simulate":
        return f"{RESOURCES}/synthetic"
    return config["data"]["root"]


def cache_dir():
    return f"{RESOURCES}/cache"


def preprocess_input():
    """The simulated folder when the run builds it; a user's download is not a job output."""
    if config["data"]["source"] == "simulate":
        return f"{RESOURCES}/synthetic"
    return []


# ---- file naming shared by the brain-age stages (train -> features -> evaluate -> table)
# Methods (METHODS): l1 (regression baseline), combat_l1 (ComBat-harmonised images + l1),
# yaware, thr, exp (CONTRASTIVE_METHODS, the kernel contrastive losses).


def harmonized_cache_dir():
    return f"{RESOURCES}/cache_combat"


def train_dir(method, seed):
    return f"{RESULTS}/train/{method}/seed{seed}"


def features_path(method, seed, split):
    return f"{RESULTS}/features/{method}/seed{seed}/{split}.npz"


def evaluation_path(method, seed):
    return f"{RESULTS}/evaluation/{method}/seed{seed}/scores.json"


# The reference rows of the results table (`brainage evaluate --reference`): REFERENCE_KINDS.
def reference_path(kind):
    return f"{RESULTS}/evaluation/reference/{kind}/scores.json"


# ---- training options (train.smk)
TRAIN = config["train"]
TRAIN_WILDCARDS = {"method": "[a-z_0-9]+", "seed": "[0-9]+"}


def train_cache(wildcards):
    """The cache a training job reads: ComBat-harmonised for combat_l1."""
    if wildcards.method == "combat_l1":
        return harmonized_cache_dir()
    return cache_dir()


# ---- `brainage` options from config keys (every rule that builds flags from a mapping uses these)


def cli_flag(key, value, negatable=True):
    """One `brainage` option from a config key; "" for None.

    Booleans: --key when true; when false --no-key if the option has that form (`negatable`:
    argparse's BooleanOptionalAction), else nothing. Lists and dicts as JSON; the rest as text.
    """
    if value is None:
        return ""
    name = f"--{key.replace('_', '-')}"
    if key in TRISTATE_OPTIONS and isinstance(value, bool):  # YAML may read on/off as booleans
        value = "on" if value else "off"
    if isinstance(value, bool):
        return name if value else (f"--no-{key.replace('_', '-')}" if negatable else "")
    if isinstance(value, (list, dict)):
        return f"{name} {shlex.quote(json.dumps(value))}"
    return f"{name} {shlex.quote(str(value))}"


def cli_options(options, negatable=True):
    """`brainage` options from a mapping of config keys, in its order (see cli_flag)."""
    return " ".join(flag for flag in (cli_flag(k, v, negatable) for k, v in options.items()) if flag)


def comma_list(values):
    """A list as the `brainage` options that take several numbers read it: comma-separated."""
    return ",".join(str(v) for v in values)


def train_options(method):
    """`brainage train` flags from the `train:` section."""
    return cli_options({k: v for k, v in TRAIN.items() if k not in WORKFLOW_KEYS})


# ---- checks at parse time: a dry run (-n) finds them before any job runs. Not checkable
# here: batch_size against the number of torchrun processes (chosen at launch), the simulated
# masks (made by the simulate job), CUDA and memory of the machines the jobs run on.


def training_split_size():
    """Subjects in the training split.

    simulate: from the cohort design the simulate job will draw (its n_subjects, n_sites and
    seed; no image is made). openbhb: from the download's participants table(s), which are
    validated on the way (a bad table fails the dry run, naming the file and line).
    """
    from brainage.data.layouts import open_dataset
    from brainage.data.simulate.sites import design_cohort

    if config["data"]["source"] == "simulate":
        sim = config["data"]["simulate"]
        table = design_cohort(sim["n_subjects"], sim["n_sites"], sim["seed"]).participants
    else:
        table = open_dataset(data_root(), layout=config["data"]["layout"]).participants
    return int((table["split"] == "train").sum())


if TRAIN["methods"]:
    N_TRAIN = training_split_size()
    if TRAIN["batch_size"] > N_TRAIN:
        source = (
            f"data.simulate: {config['data']['simulate']['n_subjects']} subjects"
            if config["data"]["source"] == "simulate"
            else data_root()
        )
        raise ValueError(
            f"train.batch_size {TRAIN['batch_size']} is larger than the training split ({N_TRAIN} subjects, "
            f"{source}): every training job would fail; lower train.batch_size"
        )
