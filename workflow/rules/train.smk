# Training stage: one network per method and seed -> its frozen features for every split.
# `combat_l1` trains the L1 model on the ComBat-harmonised cache (harmonize.smk); the other
# methods on the preprocessed cache. Every key of `train:` except the workflow keys below is a
# `brainage train` option (docs/training.md); see workflow/schemas/config.schema.yaml.

import json
import shlex


TRAIN = config["train"]
TRAIN_WORKFLOW_KEYS = ("methods", "seeds", "threads")
TRAIN_WILDCARDS = {"method": "[a-z_0-9]+", "seed": "[0-9]+"}


def _train_cache(wildcards):
    if wildcards.method == "combat_l1":
        return harmonized_cache_dir()
    return cache_dir()


TRAIN_TRISTATE = ("channels_last", "data_on_device")  # auto/on/off; YAML may read on/off as booleans


def _flag(key, value):
    name = "--" + key.replace("_", "-")
    if key in TRAIN_TRISTATE and isinstance(value, bool):
        value = "on" if value else "off"
    if isinstance(value, bool):
        return name if value else "--no-" + key.replace("_", "-")
    if isinstance(value, (list, dict)):
        return f"{name} {shlex.quote(json.dumps(value))}"
    return f"{name} {shlex.quote(str(value))}"


def train_options(method):
    """`brainage train` flags from the `train:` section."""
    options = {k: v for k, v in TRAIN.items() if k not in TRAIN_WORKFLOW_KEYS}
    return " ".join(_flag(k, v) for k, v in options.items() if v is not None)


rule train:
    wildcard_constraints:
        **TRAIN_WILDCARDS,
    input:
        cache=lambda wc: f"{_train_cache(wc)}/cache.json",
    output:
        model=f"{train_dir('{method}', '{seed}')}/model.pt",
        metrics=f"{train_dir('{method}', '{seed}')}/metrics.csv",
    params:
        cache=lambda wildcards, input: os.path.dirname(input.cache),
        out=lambda wildcards, output: os.path.dirname(output.model),
        options=lambda wildcards: train_options(wildcards.method),
    log:
        f"{LOGS}/train/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/{{method}}_seed{{seed}}.tsv"
    threads: TRAIN["threads"]
    resources:
        gpu=1,
    shell:
        "brainage train --cache {params.cache} --method {wildcards.method} --seed {wildcards.seed} "
        "--out {params.out} {params.options} --num-threads {threads} --no-progress "
        "--restart-on-mismatch > {log} 2>&1"


rule features:
    wildcard_constraints:
        **TRAIN_WILDCARDS,
    input:
        model=rules.train.output.model,
        cache=lambda wc: f"{_train_cache(wc)}/cache.json",
    output:
        [features_path("{method}", "{seed}", split) for split in CACHE_SPLITS],
    params:
        run=lambda wildcards, input: os.path.dirname(input.model),
        cache=lambda wildcards, input: os.path.dirname(input.cache),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/features/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/features/{{method}}_seed{{seed}}.tsv"
    threads: TRAIN["threads"]
    shell:
        "brainage features --run {params.run} --cache {params.cache} --out {params.out} "
        "--num-threads {threads} > {log} 2>&1"


TARGETS.extend(
    features_path(method, seed, split)
    for method in TRAIN["methods"]
    for seed in TRAIN["seeds"]
    for split in CACHE_SPLITS
)
